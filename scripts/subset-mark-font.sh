#!/usr/bin/env bash
# Rebuild src/imagegate/labels/fonts/: the small font the visible "AI生成" / "AI generated" mark
# is drawn with (labels/mark.py), cut from Debian's fonts-wqy-microhei (WenQuanYi Micro Hei,
# Apache-2.0 or GPL-3+ with the font exception; we use it under Apache-2.0) down to the glyphs a
# mark needs, and its licence next to it. The full font is 5 MB; the subset is a few tens of KB.
# Needs Debian (apt-get) and Python; installs the font package and fontTools if they are missing.
# Run it after changing CHARS, and commit both files.
set -euo pipefail
cd "$(dirname "$0")/.."

src=/usr/share/fonts/truetype/wqy/wqy-microhei.ttc
copyright=/usr/share/doc/fonts-wqy-microhei/copyright
apache=/usr/share/common-licenses/Apache-2.0
out=src/imagegate/labels/fonts
python=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || command -v python3 )}

# Printable ASCII and Latin-1 (English, French, German, Spanish... wordings), the characters of
# the default texts and of the usual Chinese wordings of the label (AI生成, AI合成, 人工智能生成, 由AI生成, 本图片由人工智能生成的内容, ...), and the full-width
# punctuation they are written with. Text outside this set falls back to Pillow's own font, or
# is refused (labels.mark.check_mark_text).
LATIN=U+0020-007E,U+00A0-00FF
CHARS="生成合人工智能内容由本图片像的此该为已经过标识，。：；、（）·"

if [ ! -f "$src" ]; then
  apt-get install -y fonts-wqy-microhei
fi
if ! "$python" -c 'import fontTools' 2>/dev/null; then
  "$python" -m pip install --quiet fonttools
fi

mkdir -p "$out"
# Font 0 of the collection is the proportional face (1 is Mono). Hinting is kept: the mark is
# drawn as small as 10 px, where the hints keep the strokes sharp. The subset keeps every name
# record (the copyright and licence strings are among them) and the 'modified' date of the
# original, so a rerun gives the same bytes.
"$python" -m fontTools.subset "$src" --font-number=0 --unicodes="$LATIN" --text="$CHARS" \
  --output-file="$out/WenQuanYiMicroHei-mark.ttf" \
  --name-IDs='*' --name-languages='*' --notdef-outline --layout-features='kern'

{
  echo "WenQuanYi Micro Hei (文泉驿微米黑), version 0.2.0-beta, a subset"
  echo
  echo "WenQuanYiMicroHei-mark.ttf is a subset of wqy-microhei.ttc (face 0) from Debian's"
  echo "fonts-wqy-microhei package, made by scripts/subset-mark-font.sh. The font is offered under"
  echo "the Apache License 2.0 or the GPL version 3 or later with the font exception; imagegate"
  echo "uses and redistributes it under the Apache License 2.0, whose text follows."
  echo
  echo "Copyright notices, as Debian's copyright file gives them:"
  echo
  # The "Files: *" stanza: the font's own copyright holders.
  sed -n '/^Files: \*/,/^License:/p' "$copyright" | sed '$d'
  echo
  echo "------------------------------------------------------------------------------------------"
  echo
  cat "$apache"
} > "$out/LICENSE-WenQuanYiMicroHei.txt"

ls -l "$out"
