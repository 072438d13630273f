// PINs come from files, never from the command line or the environment (both show up in
// process listings). A PIN file that others can read is refused.
import { existsSync, readFileSync, statSync } from 'node:fs';
import { KeywardError } from '../errors.js';

export function readPinFile(path: string | undefined): string {
  if (!path) throw new KeywardError('InvalidArgument', '--pin-file is required');
  if (!existsSync(path)) throw new KeywardError('InvalidArgument', `PIN file ${path} does not exist`);
  if ((statSync(path).mode & 0o077) !== 0) {
    throw new KeywardError('InvalidArgument', `PIN file ${path} is readable by group or others; chmod 600 it`);
  }
  const pin = readFileSync(path, 'utf8').replace(/\r?\n$/, '');
  if (pin.length === 0) throw new KeywardError('InvalidArgument', `PIN file ${path} is empty`);
  return pin;
}
