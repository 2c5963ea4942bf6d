#!/usr/bin/env node
// Kiln's JavaScript and TypeScript kernel: a Jupyter kernel over ZeroMQ
// (jp-kernel, the kernel library of IJavascript; cells run in a Node.js
// session of its nel), with each cell rewritten first (./transform.js) for
// ESM imports, top-level await and, with --typescript, TypeScript.
//
//     node kernel.js [--typescript] <connection_file>

"use strict";

const fs = require("fs");
const Kernel = require("jp-kernel");
const { transform } = require("./transform.js");

function main(argv) {
  const typescript = argv.includes("--typescript");
  const files = argv.filter((a) => !a.startsWith("--"));
  if (files.length !== 1) {
    process.stderr.write("usage: node kernel.js [--typescript] <connection_file>\n");
    process.exit(2);
  }
  const language = typescript ? "typescript" : "javascript";
  const protocolVersion = "5.0";
  const kernel = new Kernel({
    connection: JSON.parse(fs.readFileSync(files[0], "utf8")),
    cwd: process.cwd(),
    hideUndefined: true,
    protocolVersion,
    transpile: (code) => transform(code, { typescript }),
    kernelInfoReply: {
      protocol_version: protocolVersion,
      implementation: "kiln-node",
      implementation_version: "1",
      language_info: {
        name: language,
        version: process.versions.node,
        mimetype: typescript ? "text/typescript" : "application/javascript",
        file_extension: typescript ? ".ts" : ".js",
      },
      banner: `Kiln ${typescript ? "TypeScript" : "JavaScript"} (Node.js ${process.versions.node})\n`,
    },
  });
  // nel cannot interrupt a running cell: SIGINT restarts its session (the
  // context's state is lost, as when kiln-interpreter restarts a kernel).
  process.on("SIGINT", () => kernel.restart());
}

main(process.argv.slice(2));
