#!/usr/bin/env bash
# Refresh the vendored Uppy bundle served by the demo page (no CDN at run time):
#   uploader/web/vendor.sh
# Installs the pinned npm package (package-lock.json) and copies its ESM bundle, styles and
# licence into static/vendor/uppy/, which is committed and shipped in the Python package.
set -euo pipefail
cd "$(dirname "$0")"
npm ci --no-audit --no-fund --silent
mkdir -p static/vendor/uppy
cp node_modules/uppy/dist/uppy.min.mjs node_modules/uppy/dist/uppy.min.css static/vendor/uppy/
cp node_modules/uppy/LICENSE static/vendor/uppy/LICENSE 2>/dev/null || echo "MIT licence: see https://github.com/transloadit/uppy" > static/vendor/uppy/LICENSE
# Source maps are not shipped: drop the references to them.
sed -i 's|//# sourceMappingURL=.*$||' static/vendor/uppy/uppy.min.mjs
sed -i 's|/\*# sourceMappingURL=[^*]*\*/||' static/vendor/uppy/uppy.min.css
echo "vendored uppy $(node -p "require('./node_modules/uppy/package.json').version")"
