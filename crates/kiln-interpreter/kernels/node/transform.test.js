// The cell rewrite of Kiln's Node.js kernels, run as the kernel runs cells:
// each in turn as a script of one shared vm context.
//     NODE_PATH=<modules with acorn and sucrase> node --test kernels/node/
"use strict";

const { test } = require("node:test");
const assert = require("node:assert/strict");
const vm = require("node:vm");
const { transform } = require("./transform.js");

// A context like nel's: `$$.sendResult` receives the cell's (awaited) value.
function session() {
  const context = vm.createContext({ require, console });
  return async (code, options) => {
    let sent;
    context.$$ = { sendResult: (v) => (sent = v) };
    const value = vm.runInContext(transform(code, options), context);
    return sent === undefined ? value : await sent;
  };
}

test("a cell without module syntax or await is left as written", () => {
  for (const code of ["1 + 1", "const a = 1; a", "async function f() { await 1 }", "x = 1 +"]) {
    assert.equal(transform(code), code);
  }
});

test("imports become requires that later cells see", async () => {
  const run = session();
  assert.equal(await run("import { readFileSync as r } from 'fs'\ntypeof r"), "function");
  assert.equal(await run("typeof r"), "function");
  assert.equal(await run("import * as path from 'path'\npath.join('a', 'b')"), "a/b");
  assert.equal(await run("import assert from 'assert'\ntypeof assert.equal"), "function");
  assert.equal(await run("import 'fs'\n1"), 1);
});

test("top-level await gives the last expression's value", async () => {
  const run = session();
  assert.equal(await run("await Promise.resolve('Hello World!')"), "Hello World!");
  assert.equal(await run("const { a, b: [c] } = await Promise.resolve({ a: 1, b: [2] })"), undefined);
  assert.equal(await run("a + c"), 3);
  assert.equal(await run("for await (const x of [Promise.resolve(5)]) { last = x }\nlast"), 5);
});

test("declarations in an awaiting cell stay for later cells", async () => {
  const run = session();
  await run("const n = await 20\nlet m\nfunction twice(x) { return 2 * x }\nclass K { v() { return n } }");
  assert.equal(await run("twice(new K().v()) + (m === undefined ? 2 : 0)"), 42);
  // Functions are hoisted, as in a script.
  assert.equal(await run("await 0\nearly()\nfunction early() { return 'ok' }"), "ok");
  // Declarations after the last expression leave its value, as in a script.
  assert.equal(await run("await 0\n'kept'\nconst after = 1"), "kept");
});

test("an awaited rejection is the cell's error", async () => {
  const run = session();
  await assert.rejects(run("await Promise.reject(new TypeError('no'))"), { name: "TypeError", message: "no" });
});

test("TypeScript loses its types, not its imports", async () => {
  const run = session();
  const ts = { typescript: true };
  assert.equal(await run("const message: string = 'Hello'; message", ts), "Hello");
  assert.equal(await run("import { join } from 'path'\ninterface P { x: number }\nconst p: P = { x: 1 }\njoin('a', String(p.x))", ts), "a/1");
  assert.equal(await run("enum E { A, B }\nE.B", ts), 1);
  assert.equal(await run("const v = await Promise.resolve<number>(41)\nv + 1", ts), 42);
});

test("exports are dropped, their declarations kept", async () => {
  const run = session();
  assert.equal(await run("export const q = 3\nexport function f() { return q }\nf()"), 3);
});
