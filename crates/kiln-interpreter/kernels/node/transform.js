// Kiln's Node.js kernels run each cell as a script in one shared context (as
// IJavascript does), after this rewrite, so that notebook code written for
// E2B's kernel runs:
//
// - TypeScript (with `typescript: true`): types are stripped (sucrase), not
//   checked.
// - ESM `import` becomes `require`: `import x from "m"`, `import * as ns`,
//   `import { a, b as c }`, `import "m"`. The names are `var`s of the shared
//   context, so later cells see them. `export` is dropped from declarations.
// - Top-level `await`: the cell runs in an async function and its value is
//   the value of its last expression, awaited. Its top-level declarations
//   become `var`s of the shared context, as in Node's REPL.
//
// A cell with none of these is left exactly as written. Code that does not
// parse is left as written too, so that Node reports the syntax error.

"use strict";

const acorn = require("acorn");

const PARSE = { ecmaVersion: "latest", allowAwaitOutsideFunction: true, allowHashBang: true };

function parse(code) {
  for (const sourceType of ["script", "module"]) {
    try {
      return acorn.parse(code, { ...PARSE, sourceType });
    } catch (e) {
      // Try the other source type; give up below.
    }
  }
  return null;
}

// Whether `node` awaits outside any function (for-await included).
function hasTopLevelAwait(node) {
  if (!node || typeof node.type !== "string") return false;
  switch (node.type) {
    case "FunctionDeclaration":
    case "FunctionExpression":
    case "ArrowFunctionExpression":
    case "MethodDefinition":
    case "PropertyDefinition":
    case "StaticBlock":
      return false;
    case "AwaitExpression":
      return true;
    case "ForOfStatement":
      if (node.await) return true;
      break;
    default:
      break;
  }
  for (const key of Object.keys(node)) {
    const value = node[key];
    if (Array.isArray(value)) {
      if (value.some(hasTopLevelAwait)) return true;
    } else if (value && typeof value.type === "string") {
      if (hasTopLevelAwait(value)) return true;
    }
  }
  return false;
}

// Names bound by a declaration pattern (`a`, `{ a, b: [c] }`, `...d`).
function patternNames(pattern, names) {
  switch (pattern.type) {
    case "Identifier":
      names.push(pattern.name);
      break;
    case "ObjectPattern":
      for (const p of pattern.properties) patternNames(p.type === "RestElement" ? p.argument : p.value, names);
      break;
    case "ArrayPattern":
      for (const p of pattern.elements) if (p) patternNames(p, names);
      break;
    case "RestElement":
      patternNames(pattern.argument, names);
      break;
    case "AssignmentPattern":
      patternNames(pattern.left, names);
      break;
    default:
      break;
  }
  return names;
}

let counter = 0;

// An import as assignments: [name, expression] pairs, in order.
function importAssignments(node, code) {
  const source = code.slice(node.source.start, node.source.end);
  if (node.specifiers.length === 0) return [[null, `require(${source})`]];
  const module = `__kiln_import_${counter++}`;
  const assignments = [[module, `require(${source})`]];
  for (const s of node.specifiers) {
    const local = s.local.name;
    if (s.type === "ImportDefaultSpecifier") {
      assignments.push([local, `${module} && ${module}.__esModule ? ${module}.default : ${module}`]);
    } else if (s.type === "ImportNamespaceSpecifier") {
      assignments.push([local, module]);
    } else {
      const imported = s.imported.type === "Literal" ? s.imported.value : s.imported.name;
      assignments.push([local, `${module}[${JSON.stringify(imported)}]`]);
    }
  }
  return assignments;
}

function importCode(node, code) {
  return importAssignments(node, code)
    .map(([name, value]) => (name ? `var ${name} = ${value};` : `${value};`))
    .join(" ");
}

// The text of a top-level statement inside the async wrapper, and the names
// it declares (hoisted out as vars).
function wrappedStatement(node, code, hoisted) {
  const text = code.slice(node.start, node.end);
  switch (node.type) {
    case "VariableDeclaration": {
      const parts = [];
      for (const d of node.declarations) {
        patternNames(d.id, hoisted);
        if (d.init) {
          parts.push(`(${code.slice(d.id.start, d.id.end)} = ${code.slice(d.init.start, d.init.end)})`);
        } else if (node.kind !== "var") {
          parts.push(`(${code.slice(d.id.start, d.id.end)} = undefined)`);
        }
      }
      return parts.length ? `void (${parts.join(", ")});` : "";
    }
    case "FunctionDeclaration":
      hoisted.push(node.id.name);
      return { hoistedFunction: `${node.id.name} = ${text};` };
    case "ClassDeclaration":
      hoisted.push(node.id.name);
      return `${node.id.name} = ${text};`;
    default:
      return text;
  }
}

function withoutExport(node, code) {
  // `export <declaration>` → the declaration; `export default <expr>` → the
  // expression; other exports (lists, re-exports) → nothing.
  if (node.type === "ExportNamedDeclaration") {
    return node.declaration ? { node: node.declaration } : { text: node.source ? `require(${code.slice(node.source.start, node.source.end)});` : "" };
  }
  if (node.type === "ExportDefaultDeclaration") {
    const d = node.declaration;
    if (d.type === "FunctionDeclaration" || d.type === "ClassDeclaration") return d.id ? { node: d } : { text: code.slice(d.start, d.end) + ";" };
    return { text: code.slice(d.start, d.end) + ";" };
  }
  if (node.type === "ExportAllDeclaration") return { text: `require(${code.slice(node.source.start, node.source.end)});` };
  return { node };
}

function rewriteModuleSyntax(program, code) {
  // Replace import/export statements in place, keeping all other text.
  let out = "";
  let at = 0;
  for (const node of program.body) {
    let replacement = null;
    if (node.type === "ImportDeclaration") replacement = importCode(node, code);
    else if (node.type.startsWith("Export")) {
      const r = withoutExport(node, code);
      replacement = r.node ? code.slice(r.node.start, r.node.end) : r.text;
    }
    if (replacement !== null) {
      out += code.slice(at, node.start) + replacement;
      at = node.end;
    }
  }
  return out + code.slice(at);
}

function wrapTopLevelAwait(program, code) {
  const hoisted = [];
  const functions = [];
  const statements = [];
  const body = program.body;
  // The cell's value is its completion value, as a script's: that of the
  // last expression statement when only declarations follow it.
  const declaration = (n) => /^(Function|Class|Variable)Declaration$/.test(n.type) || n.type.startsWith("Export");
  let valueAt = body.length - 1;
  while (valueAt >= 0 && declaration(body[valueAt])) valueAt--;
  body.forEach((original, index) => {
    let node = original;
    if (node.type === "ImportDeclaration") {
      for (const [name, value] of importAssignments(node, code)) {
        if (name) hoisted.push(name);
        statements.push(name ? `${name} = ${value};` : `${value};`);
      }
      return;
    }
    if (node.type.startsWith("Export")) {
      const r = withoutExport(node, code);
      if (!r.node) {
        statements.push(r.text);
        return;
      }
      node = r.node;
    }
    if (index === valueAt && node.type === "ExpressionStatement") {
      statements.push(`__kiln_value = (${code.slice(node.expression.start, node.expression.end)});`);
      return;
    }
    const s = wrappedStatement(node, code, hoisted);
    if (s && s.hoistedFunction) functions.push(s.hoistedFunction);
    else statements.push(s);
  });
  const names = [...new Set(hoisted)];
  const declare = names.length ? `var ${names.join(", ")};\n` : "";
  const run = functions.concat(statements).join("\n");
  return `${declare}$$.sendResult((async () => {\nlet __kiln_value;\n${run}\nreturn __kiln_value;\n})());`;
}

function transform(code, options = {}) {
  let source = code;
  if (options.typescript) {
    const sucrase = require("sucrase");
    source = sucrase.transform(source, {
      transforms: ["typescript"],
      disableESTransforms: true,
      keepUnusedImports: true,
    }).code;
  }
  const program = parse(source);
  if (!program) return source;
  const moduleSyntax = program.body.some((n) => n.type === "ImportDeclaration" || n.type.startsWith("Export"));
  if (hasTopLevelAwait(program)) return wrapTopLevelAwait(program, source);
  if (moduleSyntax) return rewriteModuleSyntax(program, source);
  return source;
}

module.exports = { transform };
