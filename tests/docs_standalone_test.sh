#!/usr/bin/env bash
# The repository's documentation stands alone (issue 15): no file may point outside the
# repository at `../shared/…` or cite the out-of-tree design document by name, and the
# architecture page the code comments cite ("docs/architecture.md §N") must exist and be linked
# from README.md.
#
# Usage: tests/docs_standalone_test.sh REPO_ROOT
# Checks the files git knows about (tracked, plus untracked files that are not ignored, so a new
# page is checked before its first commit), except results/ (raw study outputs) and this script.
# Exit 0 when clean; 1 with one "FILE:LINE: text" line per offending line otherwise; 2 on bad
# usage.
set -euo pipefail

if [[ $# -ne 1 || ! -d "$1" ]]; then
  echo "usage: $0 REPO_ROOT" >&2
  exit 2
fi
root=$1
self=tests/docs_standalone_test.sh
failed=0

# The files to check, NUL-separated, relative to the root.
list_files() {
  if git -C "$root" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    git -C "$root" ls-files -z --cached --others --exclude-standard
  else
    # Not a git checkout (e.g. an unpacked archive): every file but build outputs.
    (cd "$root" && find . -path ./.git -prune -o -path './build*' -prune -o -type f -print0 |
      sed -z 's|^\./||')
  fi
}

declare -A seen=()
offending=()
while IFS= read -r -d '' path; do
  [[ -n "${seen[$path]:-}" ]] && continue
  seen[$path]=1
  case "$path" in
    results/* | "$self") continue ;;
  esac
  [[ -f "$root/$path" ]] || continue  # deleted in the work tree but still in the index
  # -I skips binary files (model weights, images); -F: the patterns are literal strings.
  while IFS= read -r hit; do
    offending+=("$path:$hit")
  done < <(grep -nIF -e '../shared' -e 'DESIGN.md' -- "$root/$path" || true)
done < <(list_files)

if ((${#offending[@]} > 0)); then
  echo "docs_standalone_test: ${#offending[@]} line(s) point outside the repository" \
    "(../shared or DESIGN.md); cite docs/architecture.md §N or a docs/ page instead:" >&2
  printf '  %s\n' "${offending[@]}" >&2
  failed=1
fi

if [[ ! -s "$root/docs/architecture.md" ]]; then
  echo "docs_standalone_test: docs/architecture.md is missing or empty" >&2
  failed=1
fi

# A Markdown link to the page, e.g. [docs/architecture.md](docs/architecture.md) or (…#section).
if [[ ! -f "$root/README.md" ]] ||
  ! grep -qE '\]\((\./)?docs/architecture\.md(#[^)]*)?\)' "$root/README.md"; then
  echo "docs_standalone_test: README.md does not link docs/architecture.md" >&2
  failed=1
fi

if ((failed == 0)); then
  echo "docs_standalone_test: OK" >&2
fi
exit "$failed"
