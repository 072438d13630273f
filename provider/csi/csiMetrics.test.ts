import assert from 'node:assert/strict';
import { CsiMetrics } from './csiMetrics.js';

describe('CSI provider metrics', () => {
  it('serves Node\'s standard metrics under their own names with component="csi-provider"', async () => {
    const text = await new CsiMetrics().registry.metrics();
    assert.match(text, /^process_cpu_user_seconds_total\{component="csi-provider"\} /m);
    assert.match(text, /^nodejs_version_info\{[^}]*component="csi-provider"\} 1$/m);
    assert.doesNotMatch(text, /^keyward_csi_(process|nodejs)_/m, 'no prefixed copies');
  });
});
