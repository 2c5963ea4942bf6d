// kiln-interpreter driven by the unmodified @e2b/code-interpreter JS SDK.
// Starts its own server on loopback (KILN_INTERPRETER_BIN, JUPYTER_PATH as
// scripts/test.d/50-interpreter.sh sets them) and points the SDK at it with
// sandboxUrl, as E2B_SANDBOX_URL would.
import { test, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { createServer } from 'node:net'
import { mkdtempSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Sandbox } from '@e2b/code-interpreter'
import { NotFoundError, SandboxError, TimeoutError } from 'e2b'

let server
let sandbox

async function freePort() {
  return new Promise((resolve, reject) => {
    const s = createServer()
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address()
      s.close(() => resolve(port))
    })
    s.on('error', reject)
  })
}

before(async () => {
  const port = await freePort()
  const bin = process.env.KILN_INTERPRETER_BIN ?? 'target/debug/kiln-interpreter'
  const cwd = mkdtempSync(join(tmpdir(), 'kiln-interp-js-'))
  server = spawn(bin, ['--listen', `127.0.0.1:${port}`, '--cwd', cwd, '--preload', 'python'], {
    stdio: ['ignore', 'ignore', 'inherit'],
    env: { ...process.env, RUST_LOG: process.env.RUST_LOG ?? 'warn' },
  })
  const url = `http://127.0.0.1:${port}`
  const deadline = Date.now() + 30_000
  for (;;) {
    try {
      const r = await fetch(`${url}/health`)
      if (r.ok) break
    } catch {}
    if (Date.now() > deadline || server.exitCode !== null) throw new Error('kiln-interpreter did not start')
    await new Promise((r) => setTimeout(r, 50))
  }
  sandbox = new Sandbox({
    sandboxId: 'kiln-interpreter-js-test',
    sandboxUrl: url,
    apiKey: 'e2b_' + '0'.repeat(40),
    envdVersion: '0.5.7',
    envdAccessToken: 'test-token',
  })
})

after(async () => {
  if (server && server.exitCode === null) {
    const exited = new Promise((r) => server.once('exit', r))
    server.kill('SIGTERM')
    await exited
  }
})

test('state carries over between runs', async () => {
  await sandbox.runCode('js_sdk_x = 1')
  const execution = await sandbox.runCode('js_sdk_x + 1')
  assert.equal(execution.error, undefined)
  assert.equal(execution.text, '2')
})

test('contexts keep separate state and restart clears it', async () => {
  const a = await sandbox.createCodeContext({ language: 'python' })
  const b = await sandbox.createCodeContext()
  try {
    await sandbox.runCode("v = 'a'", { context: a })
    await sandbox.runCode("v = 'b'", { context: b })
    assert.equal((await sandbox.runCode('v', { context: a })).text, 'a')
    assert.equal((await sandbox.runCode('v', { context: b })).text, 'b')
    const ids = (await sandbox.listCodeContexts()).map((c) => c.id)
    assert.ok(ids.includes(a.id) && ids.includes(b.id))
    await sandbox.restartCodeContext(a)
    const after = await sandbox.runCode('v', { context: a })
    assert.equal(after.error.name, 'NameError')
  } finally {
    await sandbox.removeCodeContext(a)
    await sandbox.removeCodeContext(b.id)
  }
})

test('stdout streams while the cell runs', async () => {
  const arrivals = []
  const execution = await sandbox.runCode(
    'import time\nfor i in range(4):\n    print(i, flush=True)\n    time.sleep(0.5)',
    { onStdout: (m) => arrivals.push([Date.now(), m.line]) },
  )
  const done = Date.now()
  assert.equal(execution.error, undefined)
  assert.deepEqual(arrivals.map(([, l]) => l).join(''), '0\n1\n2\n3\n')
  assert.ok(done - arrivals[0][0] > 1200, `first line arrived ${done - arrivals[0][0]} ms before the end`)
})

test('a matplotlib figure is a png result', async () => {
  const execution = await sandbox.runCode(
    'import matplotlib.pyplot as plt\nplt.bar([1, 2], [3, 4])\nplt.show()',
  )
  const png = execution.results.find((r) => r.png)?.png
  assert.ok(png)
  assert.deepEqual([...Buffer.from(png, 'base64').subarray(0, 4)], [0x89, 0x50, 0x4e, 0x47])
})

test('errors carry name, value and traceback', async () => {
  const execution = await sandbox.runCode('1/0')
  assert.equal(execution.error.name, 'ZeroDivisionError')
  assert.equal(execution.error.value, 'division by zero')
  assert.match(execution.error.traceback, /ZeroDivisionError/)
})

test('javascript returns a value', async () => {
  const execution = await sandbox.runCode('[1, 2, 3].map((x) => x * 2).join(",")', { language: 'js' })
  assert.equal(execution.error, undefined)
  assert.equal(execution.text, '2,4,6')
})

test('an infinite loop times out and the context stays usable', async () => {
  await sandbox.runCode("js_kept = 'yes'")
  const started = Date.now()
  await assert.rejects(sandbox.runCode('while True:\n    pass', { timeoutMs: 2000 }), TimeoutError)
  assert.ok(Date.now() - started < 10_000)
  const next = await sandbox.runCode('js_kept')
  assert.equal(next.text, 'yes')
})

test('bad input gets clear errors', async () => {
  await assert.rejects(sandbox.runCode('x', { language: 'cobol' }), (e) => {
    assert.ok(e instanceof SandboxError, String(e))
    // The JS SDK keeps only the status unless diagnostics are on.
    assert.match(e.message, /^400 /)
    return true
  })
  await assert.rejects(
    sandbox.runCode('1', { context: { id: 'no-such-context', language: 'python', cwd: '/' } }),
    NotFoundError,
  )
  const empty = await sandbox.runCode('')
  assert.equal(empty.error, undefined)
  assert.deepEqual(empty.results, [])
})
