// The cost of the gRPC transport alone: one KMS v2 Status handler (no HSM, no audit) served by
// Keyward's server (core/grpc/grpcServer.ts), by @connectrpc/connect-node on node:http2, and by
// @grpc/grpc-js, each in its own process, driven in turn by the Go load generator (kms-load, one
// HTTP/2 connection like kube-apiserver). Reports each server's CPU per call and memory, as JSON
// lines; the order rotates every round so drift in the machine's load falls on all alike.
//   node dist/bench/transportBench.js              the benchmark
//   node dist/bench/transportBench.js serve NAME SOCKET   one server (what the benchmark spawns)
import { create } from '@bufbuild/protobuf';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:http2';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { startGrpcServer, unaryService } from '../core/grpc/grpcServer.js';
import { listenOnUnixSocket } from '../core/grpc/unixSocket.js';
import { kmsPluginNodeFlags } from '../e2e/kms/kmsPluginProcess.js';
import { KeyManagementService, StatusResponseSchema, type StatusResponse } from '../proto/gen/kms/v2/api_pb.js';
import { buildGoClient, runGoClient } from './goClient.js';
import { cpuSeconds, memoryMib, watchPeakRss } from './procStats.js';
import { emit, load1m, round, warnIfBusy } from './report.js';

const transports = ['keyward', 'connect-node', 'grpc-js'] as const;
type Transport = (typeof transports)[number];
const rounds = Number(process.env.KEYWARD_BENCH_ROUNDS ?? 3);
const seconds = Number(process.env.KEYWARD_BENCH_SECONDS ?? 6);
const concurrency = 64;
const progress = (line: string): void => console.error(`[bench:transport] ${line}`);

const status = (): Promise<StatusResponse> => Promise.resolve(create(StatusResponseSchema, { version: 'v2', healthz: 'ok', keyId: 'k1' }));
const unused = (): Promise<never> => Promise.reject(new Error('not part of this benchmark'));

async function serve(transport: Transport, socketPath: string): Promise<void> {
  if (transport === 'keyward') {
    await startGrpcServer({ socketPath, maxRequestBytes: 64 * 1024, services: [unaryService(KeyManagementService, { status, encrypt: unused, decrypt: unused })] });
  } else if (transport === 'connect-node') {
    const { connectNodeAdapter } = await import('@connectrpc/connect-node');
    const handler = connectNodeAdapter({
      grpc: true,
      grpcWeb: false,
      connect: false,
      readMaxBytes: 64 * 1024,
      routes: (router) => router.service(KeyManagementService, { status, encrypt: unused, decrypt: unused }),
    });
    await listenOnUnixSocket(createServer(handler), socketPath);
  } else {
    const grpc = await import('@grpc/grpc-js');
    const server = new grpc.Server({ 'grpc.max_receive_message_length': 64 * 1024, 'grpc.enable_channelz': 0 });
    const path = '/v2.KeyManagementService/Status';
    const definition = {
      status: {
        path,
        requestStream: false,
        responseStream: false,
        requestSerialize: (b: Buffer) => b,
        requestDeserialize: (b: Buffer) => b,
        responseSerialize: (b: Buffer) => b,
        responseDeserialize: (b: Buffer) => b,
      },
    };
    const { toBinary } = await import('@bufbuild/protobuf');
    server.addService(definition, {
      status: (_call: unknown, callback: (err: null, response: Buffer) => void) =>
        void status().then((response) => callback(null, Buffer.from(toBinary(StatusResponseSchema, response)))),
    });
    await new Promise<void>((resolve, reject) =>
      server.bindAsync(`unix:${socketPath}`, grpc.ServerCredentials.createInsecure(), (err) => (err ? reject(err) : resolve())),
    );
  }
  process.stdout.write('ready\n');
}

function startServer(transport: Transport, socketPath: string): Promise<ChildProcess> {
  // The KMS plugin's heap flags, so memory compares as the plugin would run.
  const child = spawn(process.execPath, [...kmsPluginNodeFlags, fileURLToPath(import.meta.url), 'serve', transport, socketPath], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  return new Promise((resolve, reject) => {
    child.stdout.once('data', () => resolve(child));
    child.once('exit', (code) => reject(new Error(`${transport} server exited with code ${code}`)));
  });
}

async function main(): Promise<void> {
  warnIfBusy(progress);
  const bin = buildGoClient('kms-load');
  const dir = mkdtempSync(join(tmpdir(), 'keyward-bench-transport-'));
  const servers = new Map<Transport, { child: ChildProcess; socketPath: string }>();
  try {
    for (const transport of transports) {
      const socketPath = join(dir, `${transport}.sock`);
      servers.set(transport, { child: await startServer(transport, socketPath), socketPath });
    }
    await sleep(1000);
    for (const [transport, { child }] of servers) emit({ bench: 'transport', figure: 'idle_memory', transport, ...mib(memoryMib(child.pid!)) });
    for (let r = 0; r < rounds; r++) {
      const order = [...transports.slice(r % transports.length), ...transports.slice(0, r % transports.length)];
      for (const transport of order) {
        const { child, socketPath } = servers.get(transport)!;
        progress(`round ${r + 1}/${rounds}: ${transport}, Status at concurrency ${concurrency} for 1+${seconds} s`);
        const peak = watchPeakRss(child.pid!);
        const measured = sleep(1300).then(() => ({ cpu: cpuSeconds(child.pid!), at: performance.now() }));
        const report = await runGoClient(bin, [`-socket=${socketPath}`, '-method=status', `-concurrency=${concurrency}`, `-duration=${seconds}s`, '-warmup=1s', `-label=${transport}`]);
        const start = await measured;
        const cpuUsed = cpuSeconds(child.pid!) - start.cpu;
        const wall = (performance.now() - start.at) / 1000;
        const calls = Number(report.ops_per_s) * wall;
        emit({
          bench: 'transport',
          transport,
          round: r + 1,
          ops_per_s: report.ops_per_s,
          p99_ms: report.p99_ms,
          errors: report.errors,
          cpu_us_per_call: calls > 0 ? round((cpuUsed * 1e6) / calls, 1) : null,
          rss_peak_mib: round(peak(), 1),
          load_1m: load1m(),
        });
      }
    }
  } finally {
    for (const { child } of servers.values()) child.kill('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  }
}

const mib = (m: { rss: number; anon: number; file: number }): Record<string, number> => ({ rss_mib: round(m.rss, 1), rss_anon_mib: round(m.anon, 1), rss_file_mib: round(m.file, 1) });

if (process.argv[2] === 'serve') {
  await serve(process.argv[3] as Transport, process.argv[4]!);
} else if (process.argv[1] === fileURLToPath(import.meta.url)) {
  try {
    await main();
  } catch (err) {
    console.error(`[bench:transport] FAILED: ${(err as Error).message}`);
    process.exitCode = 1;
  }
}
