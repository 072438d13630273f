// The configuration files of a test node: containerd, the CNI network, the kubelet and
// kube-proxy. Every path is under the node's directory and every port is chosen by the caller;
// the values that differ from upstream defaults say why (reference: shared/reference/node.md).

export interface NodeLayout {
  dir: string;
  name: string;
  address: string;
  /** The CNI network's name; its bridge is `cni-<network>0`. */
  network: string;
  podSubnet: string;
  sandboxImage: string;
  ports: { kubelet: number; kubeletHealthz: number; proxyHealthz: number; proxyMetrics: number };
}

export const paths = (dir: string) => ({
  containerdSocket: `${dir}/containerd/containerd.sock`,
  containerdConfig: `${dir}/containerd/config.toml`,
  cniConfDir: `${dir}/etc/cni/net.d`,
  kubeletRoot: `${dir}/kubelet`,
  kubeletConfig: `${dir}/kubelet-config.yaml`,
  kubeProxyConfig: `${dir}/kube-proxy-config.yaml`,
  staticPods: `${dir}/manifests`,
  podLogs: `${dir}/pod-logs`,
  providers: `${dir}/providers`,
  pki: `${dir}/pki`,
});

export const bridgeName = (network: string): string => `cni-${network}0`;

export function containerdConfig(layout: NodeLayout): string {
  const p = paths(layout.dir);
  return `version = 2
root = "${layout.dir}/containerd/root"
state = "${layout.dir}/containerd/state"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.devmapper"]
[grpc]
  address = "${p.containerdSocket}"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "${layout.sandboxImage}"
  enable_cdi = false
  # Root here lacks CAP_SYS_RESOURCE: runc cannot lower oom_score_adj, so clamp it.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "/usr/sbin/runc"
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "${p.cniConfDir}"
`;
}

export function cniConflist(layout: NodeLayout): string {
  return JSON.stringify(
    {
      cniVersion: '1.0.0',
      name: layout.network,
      plugins: [
        {
          type: 'bridge',
          bridge: bridgeName(layout.network),
          isGateway: true,
          // Pods need no way out of the node: no NAT rules.
          ipMasq: false,
          hairpinMode: true,
          ipam: {
            type: 'host-local',
            ranges: [[{ subnet: layout.podSubnet }]],
            routes: [{ dst: '0.0.0.0/0' }],
            dataDir: `${layout.dir}/cni/ipam`,
          },
        },
        { type: 'portmap', capabilities: { portMappings: true } },
      ],
    },
    null,
    2,
  );
}

export function kubeletConfig(layout: NodeLayout): string {
  const p = paths(layout.dir);
  return JSON.stringify(
    {
      apiVersion: 'kubelet.config.k8s.io/v1beta1',
      kind: 'KubeletConfiguration',
      // Hybrid cgroups here; kubelet 1.35+ refuses cgroup v1 unless told.
      failCgroupV1: false,
      // No systemd, and containerd 1.6 cannot report its cgroup driver.
      cgroupDriver: 'cgroupfs',
      containerRuntimeEndpoint: `unix://${p.containerdSocket}`,
      staticPodPath: p.staticPods,
      podLogsDir: p.podLogs,
      authentication: { anonymous: { enabled: false }, webhook: { enabled: true }, x509: { clientCAFile: `${p.pki}/ca.crt` } },
      authorization: { mode: 'Webhook' },
      clusterDomain: 'cluster.local',
      clusterDNS: ['10.0.0.10'],
      address: layout.address,
      port: layout.ports.kubelet,
      readOnlyPort: 0,
      healthzBindAddress: '127.0.0.1',
      healthzPort: layout.ports.kubeletHealthz,
      failSwapOn: false,
      serializeImagePulls: false,
      // Keep image GC and disk-pressure eviction out of tests on a busy build machine.
      evictionHard: { 'memory.available': '100Mi', 'nodefs.available': '1%', 'imagefs.available': '1%', 'nodefs.inodesFree': '1%' },
      imageGCHighThresholdPercent: 100,
      imageGCLowThresholdPercent: 99,
      resolvConf: '/etc/resolv.conf',
      // Otherwise kubelet adds KUBE-FIREWALL and canary chains to the host's iptables.
      makeIPTablesUtilChains: false,
      // Leave the host's kernel tunables alone; the harness checks them anyway.
      protectKernelDefaults: false,
      // Static pods and the driver's rotation poll: status quickly.
      nodeStatusUpdateFrequency: '4s',
      syncFrequency: '10s',
    },
    null,
    2,
  );
}

export function kubeProxyConfig(layout: NodeLayout, kubeconfig: string): string {
  return JSON.stringify(
    {
      apiVersion: 'kubeproxy.config.k8s.io/v1alpha1',
      kind: 'KubeProxyConfiguration',
      clientConnection: { kubeconfig },
      mode: 'iptables',
      hostnameOverride: layout.name,
      clusterCIDR: layout.podSubnet,
      healthzBindAddress: `127.0.0.1:${layout.ports.proxyHealthz}`,
      metricsBindAddress: `127.0.0.1:${layout.ports.proxyMetrics}`,
      // Leave the conntrack sysctls alone.
      conntrack: { maxPerCore: 0, min: 0, tcpEstablishedTimeout: '0s', tcpCloseWaitTimeout: '0s' },
      // No route_localnet sysctl.
      iptables: { localhostNodePorts: false },
    },
    null,
    2,
  );
}

/** The Secrets Store CSI driver's CSIDriver object: pod info and a token for the provider's audience. */
export function csiDriverObject(audience: string): object {
  return {
    apiVersion: 'storage.k8s.io/v1',
    kind: 'CSIDriver',
    metadata: { name: 'secrets-store.csi.k8s.io' },
    spec: {
      podInfoOnMount: true,
      attachRequired: false,
      requiresRepublish: true,
      volumeLifecycleModes: ['Ephemeral'],
      // The token travels in NodePublish secrets, not in volume attributes that may be logged.
      serviceAccountTokenInSecrets: true,
      tokenRequests: [{ audience }],
    },
  };
}
