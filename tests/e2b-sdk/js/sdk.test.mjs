// The npm `e2b` SDK on Node 20 against kilnd: create, run, files, kill.
// Run by test_js.py, which installs the SDK into a temp dir.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { Sandbox } from 'e2b'

test('create, run, files, kill', async () => {
  const sbx = await Sandbox.create({ timeoutMs: 120_000, metadata: { from: 'js' } })
  try {
    const r = await sbx.commands.run('echo js-$((1+1))')
    assert.equal(r.exitCode, 0)
    assert.equal(r.stdout, 'js-2\n')

    await sbx.files.write('/home/user/js.txt', 'from node')
    assert.equal(await sbx.files.read('/home/user/js.txt'), 'from node')
    const names = (await sbx.files.list('/home/user')).map((e) => e.name)
    assert.ok(names.includes('js.txt'))

    const info = await sbx.getInfo()
    assert.equal(info.sandboxId, sbx.sandboxId)
    assert.deepEqual(info.metadata, { from: 'js' })
  } finally {
    await sbx.kill()
  }
  assert.equal(await sbx.isRunning(), false)
})
