#!/bin/sh
# Installs the Node OpenTelemetry client used by the end-to-end tests (tests/node) into tests/node/node_modules.
# Idempotent: does nothing when every pinned dependency is already installed at its pinned version.
# No lockfile is written: package.json pins every direct dependency exactly, and a lockfile would record
# registry URLs. Needs node >= 18 and npm on PATH.
set -eu

dir="$(cd "$(dirname "$0")/../node" && pwd)"

command -v node >/dev/null 2>&1 || { echo "install-node.sh: node is not installed (need Node.js >= 18 and npm)" >&2; exit 1; }
command -v npm >/dev/null 2>&1 || { echo "install-node.sh: npm is not installed (need Node.js >= 18 and npm)" >&2; exit 1; }

complete() {
    # Exit 0 when node_modules holds every dependency of package.json at exactly the pinned version.
    node --input-type=module -e '
        import { readFileSync } from "node:fs";
        const dir = process.argv[1];
        const deps = JSON.parse(readFileSync(`${dir}/package.json`, "utf8")).dependencies ?? {};
        for (const [name, version] of Object.entries(deps)) {
            let installed;
            try {
                installed = JSON.parse(readFileSync(`${dir}/node_modules/${name}/package.json`, "utf8")).version;
            } catch {
                process.exit(1);
            }
            if (installed !== version) process.exit(1);
        }
    ' "$dir"
}

if complete; then
    echo "install-node.sh: $dir/node_modules is complete"
    exit 0
fi

cd "$dir"
npm install --no-audit --no-fund --no-package-lock
complete || { echo "install-node.sh: npm install finished but $dir/node_modules is still incomplete" >&2; exit 1; }
echo "install-node.sh: installed into $dir/node_modules"
