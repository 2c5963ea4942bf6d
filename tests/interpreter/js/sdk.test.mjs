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

test('a matplotlib figure carries its chart', async () => {
  const execution = await sandbox.runCode(
    "import matplotlib.pyplot as plt\nplt.close('all')\n" +
      "plt.bar(['Oslo', 'Lima'], [3, 7], label='Visits')\nplt.xlabel('City')\nplt.title('Visits')\nplt.show()",
  )
  assert.equal(execution.error, undefined)
  const [result] = execution.results
  assert.ok(result.png)
  const chart = result.chart
  assert.equal(chart.type, 'bar')
  assert.equal(chart.title, 'Visits')
  assert.equal(chart.x_label, 'City')
  assert.deepEqual(
    chart.elements.map((b) => [b.label, b.value, b.group]),
    [['Oslo', 3, 'Visits'], ['Lima', 7, 'Visits']],
  )
  const line = (await sandbox.runCode("plt.plot([1, 10, 100], [1, 2, 3]); plt.yscale('log'); plt.show()")).results[0].chart
  assert.equal(line.type, 'line')
  assert.equal(line.y_scale, 'log')
  assert.deepEqual(line.elements[0].points, [[1, 1], [10, 2], [100, 3]])
})

test('a DataFrame carries its data', async () => {
  const execution = await sandbox.runCode("import pandas as pd\npd.DataFrame({'a': [1, 2, 3], 'b': ['x', 'y', None]})")
  const [result] = execution.results
  assert.deepEqual(result.data, { a: [1, 2, 3], b: ['x', 'y', null] })
  assert.ok(result.html.includes('<table'))
})

test('javascript takes ESM imports and top-level await', async () => {
  const imported = await sandbox.runCode("import { readFileSync } from 'fs'\nconsole.log(typeof readFileSync)", { language: 'js' })
  assert.deepEqual(imported.logs.stdout, ['function\n'])
  const awaited = await sandbox.runCode("await Promise.resolve('Hello World!')", { language: 'javascript' })
  assert.equal(awaited.text, 'Hello World!')
})

test('typescript, java and r run in their kernels', async () => {
  const ts = await sandbox.runCode("const jsSdkMessage: string = 'typed'; jsSdkMessage", { language: 'ts' })
  assert.equal(ts.error, undefined)
  assert.equal(ts.text, 'typed')
  const java = await sandbox.runCode('System.out.println("Hello, World!")', { language: 'java' })
  assert.equal(java.logs.stdout[0], 'Hello, World!')
  assert.equal((await sandbox.runCode('6 * 7', { language: 'java' })).text, '42')
  const r = await sandbox.runCode('40 + 2', { language: 'r' })
  assert.equal(r.text, '[1] 42')
})

test('contexts: the defaults are listed, a new one last', async () => {
  const languages = (await sandbox.listCodeContexts()).map((c) => c.language)
  assert.ok(languages.includes('python') && languages.includes('javascript'))
  const ctx = await sandbox.createCodeContext({ language: 'typescript' })
  try {
    const list = await sandbox.listCodeContexts()
    assert.equal(list[list.length - 1].id, ctx.id)
    assert.equal(list[list.length - 1].language, 'typescript')
  } finally {
    await sandbox.removeCodeContext(ctx)
  }
})
