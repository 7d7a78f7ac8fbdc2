// The test command (npm test): builds lockservice from this checkout once
// (unless LOCKSERVICE_BIN names a binary), then runs every test/*.test.js
// with node:test.

import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const env = { ...process.env };
let built;
if (!env.LOCKSERVICE_BIN) {
  built = mkdtempSync(join(tmpdir(), 'lockservice-bin-'));
  env.LOCKSERVICE_BIN = join(built, 'lockservice');
  execFileSync('go', ['build', '-o', env.LOCKSERVICE_BIN, './cmd/lockservice'], { cwd: resolve(here, '../../..'), stdio: 'inherit' });
}
const files = readdirSync(here).filter((f) => f.endsWith('.test.js')).sort().map((f) => join(here, f));
const r = spawnSync(process.execPath, ['--test', ...process.argv.slice(2), ...files], { env, stdio: 'inherit' });
if (built) rmSync(built, { recursive: true, force: true });
process.exit(r.status ?? 1);
