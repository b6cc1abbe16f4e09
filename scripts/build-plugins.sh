#!/usr/bin/env bash
# Builds every plugin (Rust: `cargo build --target wasm32-wasip2`; Python: componentize-py;
# JavaScript: componentize-js)
# and lays them out as deployable plugin directories:
#   target/plugins/<name>/{plugin.toml,<name>.wasm}        deployed by default
#   target/test-plugins/<name>/{plugin.toml,<name>.wasm}   for tests only, never deployed
# (`target` is $CARGO_TARGET_DIR when set, as for cargo and the tests.)
# BUILD_PLUGINS=deployed builds only the deployed ones (the Dockerfile: no test plugins,
# no Python toolchain in the image's build stage).
set -euo pipefail
cd "$(dirname "$0")/.."
target=${CARGO_TARGET_DIR:-target}
bash scripts/setup.sh

deployed=(hello auth users)
testing=(trap spin membomb badstatus versioned bigbody counter kvprobe nosy sqlprobe wasihttp)
only_deployed=false
case "${BUILD_PLUGINS:-all}" in
  all) ;;
  deployed) only_deployed=true; testing=() ;;
  *) echo "build-plugins: BUILD_PLUGINS must be \`all\` or \`deployed\`" >&2; exit 2 ;;
esac

packages=()
for p in "${deployed[@]}" "${testing[@]}"; do packages+=(-p "plinth-plugin-$p"); done
cargo build --release --locked --target wasm32-wasip2 "${packages[@]}"

lay_out() { # <source dir with plugin.toml> <name> <destination root>
  local src=$1 name=$2 root=$3
  local dest="$root/$name"
  mkdir -p "$dest"
  # The route descriptions' schemas file (`schemas = "x.json"`), before the manifest naming it.
  local schemas
  schemas=$(sed -n 's/^schemas *= *"\(.*\)"/\1/p' "$src/plugin.toml")
  if [ -n "$schemas" ]; then
    cp "$src/$schemas" "$dest/$schemas.tmp" && mv "$dest/$schemas.tmp" "$dest/$schemas"
  fi
  cp "$src/plugin.toml" "$dest/plugin.toml.tmp" && mv "$dest/plugin.toml.tmp" "$dest/plugin.toml"
  local component
  component=$(sed -n 's/^component *= *"\(.*\)"/\1/p' "$src/plugin.toml")
  # Copy then rename: a watching host never sees a half-written component.
  cp "$target/wasm32-wasip2/release/plinth_plugin_${name}.wasm" "$dest/$component.tmp"
  mv "$dest/$component.tmp" "$dest/$component"
  # A plugin ships the migrations of the data set it names (`sql = { data_set = "x" }`)
  # from migrations/<x>/, or its own from <plugin>/migrations/.
  local data_set
  data_set=$(sed -n 's/^sql *= *{ *data_set *= *"\([a-z0-9_-]*\)".*/\1/p' "$src/plugin.toml")
  local migrations=""
  if [ -d "$src/migrations" ]; then migrations="$src/migrations"
  elif [ -n "$data_set" ] && [ -d "migrations/$data_set" ]; then migrations="migrations/$data_set"
  fi
  rm -rf "$dest/migrations.tmp"
  if [ -n "$migrations" ]; then
    cp -r "$migrations" "$dest/migrations.tmp"
    rm -rf "$dest/migrations" && mv "$dest/migrations.tmp" "$dest/migrations"
  fi
}
for p in "${deployed[@]}"; do lay_out "plugins/$p" "$p" "$target/plugins"; done
for p in "${testing[@]}"; do lay_out "plugins/testing/$p" "$p" "$target/test-plugins"; done

if [ "$only_deployed" = true ]; then
  echo "plugins ready in $target/plugins (deployed ones only)"
  exit 0
fi

# The reload tests swap `versioned` between two builds: v2 is the same crate with its
# `v2` feature, laid out as target/test-plugins/versioned-v2 (manifest version 2.0.0).
cargo build --release --locked --target wasm32-wasip2 -p plinth-plugin-versioned --features v2
v2="$target/test-plugins/versioned-v2"
mkdir -p "$v2"
sed 's/^version = .*/version = "2.0.0"/' plugins/testing/versioned/plugin.toml > "$v2/plugin.toml"
cp "$target/wasm32-wasip2/release/plinth_plugin_versioned.wasm" "$v2/versioned.wasm.tmp"
mv "$v2/versioned.wasm.tmp" "$v2/versioned.wasm"
# Plugins in Python and JavaScript, built by their toolchains against wit/'s `plugin-kv`
# world and laid out with the test plugins under their manifests' names. The components
# carry a language runtime (CPython, SpiderMonkey), so a build takes seconds to half a
# minute: it is skipped while the plugin's sources, the WIT and the toolchain are unchanged.
# script_plugin <src dir> <tools dir> <toolchain pin file> <source glob> <build command...>
# (the build command gets the output path appended).
script_plugin() {
  local src=$1 tools=$2 pin=$3 sources=$4
  shift 4
  local name component dest built_from
  name=$(sed -n 's/^name *= *"\(.*\)"/\1/p' "$src/plugin.toml")
  component=$(sed -n 's/^component *= *"\(.*\)"/\1/p' "$src/plugin.toml")
  dest="$target/test-plugins/$name"
  # shellcheck disable=SC2086 # the glob expands here
  built_from=$(cat $src/$sources wit/*.wit "$pin" | sha256sum | cut -c1-32)
  mkdir -p "$dest" "$tools/built"
  if [ ! -f "$dest/$component" ] || [ "$(cat "$tools/built/$name" 2>/dev/null)" != "$built_from" ]; then
    "$@" "$dest/$component.tmp" >/dev/null
    mv "$dest/$component.tmp" "$dest/$component"
    echo "$built_from" > "$tools/built/$name"
  fi
  for file in schemas.json plugin.toml; do
    [ -f "$src/$file" ] && cp "$src/$file" "$dest/$file.tmp" && mv "$dest/$file.tmp" "$dest/$file"
  done
}

# Python: componentize-py, pinned in plugins/python/requirements.txt, in target/py-venv.
py_venv="$target/py-venv"
if ! cmp -s plugins/python/requirements.txt "$py_venv/.requirements" 2>/dev/null; then
  echo "build-plugins: installing $(grep -v '^#' plugins/python/requirements.txt) into $py_venv" >&2
  rm -rf "$py_venv"
  python3 -m venv "$py_venv"
  "$py_venv/bin/pip" install --quiet --disable-pip-version-check -r plugins/python/requirements.txt
  cp plugins/python/requirements.txt "$py_venv/.requirements"
fi
for src in plugins/python/*/; do
  PYTHONDONTWRITEBYTECODE=1 script_plugin "$src" "$py_venv" plugins/python/requirements.txt '*.py' \
    "$py_venv/bin/componentize-py" -d wit -w plugin-kv componentize -p "$src" app -o
done

# JavaScript: componentize-js, pinned in plugins/js/package-lock.json, in target/js-tools.
js_tools="$target/js-tools"
if ! cmp -s plugins/js/package-lock.json "$js_tools/package-lock.json" 2>/dev/null; then
  echo "build-plugins: installing componentize-js (plugins/js/package-lock.json) into $js_tools" >&2
  rm -rf "$js_tools"
  mkdir -p "$js_tools"
  cp plugins/js/package.json plugins/js/package-lock.json "$js_tools/"
  (cd "$js_tools" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
fi
for src in plugins/js/*/; do
  script_plugin "$src" "$js_tools" plugins/js/package-lock.json '*.js' \
    "$js_tools/node_modules/.bin/componentize-js" "$src/app.js" --wit wit --world-name plugin-kv \
    --disable http fetch-event -o
done

echo "plugins ready in $target/plugins (test plugins in $target/test-plugins)"
