// The README's JavaScript example runs as printed against the service and
// prints what its comments say.

import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readFileSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { after, before, test } from 'node:test';
import { fileURLToPath } from 'node:url';

import { startService } from './helpers.js';

const here = dirname(fileURLToPath(import.meta.url));

/** @type {Awaited<ReturnType<typeof startService>>} */
let svc;
before(async () => {
  svc = await startService();
});
after(() => svc?.stop());

test('the README example runs and prints what it says', () => {
  const readme = readFileSync(join(here, '../../../README.md'), 'utf8');
  const section = readme.slice(readme.indexOf('\n## JavaScript and TypeScript client\n'));
  const m = /```js\n([\s\S]*?)```/.exec(section);
  assert.ok(m, 'no js block in the README section "JavaScript and TypeScript client"');
  const code = m[1];
  const want = [...code.matchAll(/^console\.log\(.*\); \/\/ (.*)$/gm)].map((x) => x[1]);
  assert.ok(want.length >= 3, `found ${want.length} commented console.log lines`);
  // Inside the package, so that '@lockservice/client' resolves to it.
  const file = join(here, `.readme-example-${process.pid}.mjs`);
  writeFileSync(file, code);
  try {
    const r = spawnSync(process.execPath, [file], { env: { ...process.env, NATS_URL: svc.url }, encoding: 'utf8', timeout: 30_000 });
    assert.equal(r.status, 0, `the example failed:\n${r.stdout}${r.stderr}`);
    assert.deepEqual(r.stdout.trim().split('\n'), want);
  } finally {
    rmSync(file, { force: true });
  }
});
