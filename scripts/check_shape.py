#!/usr/bin/env python3
"""Checks the codebase's shape rules; exits 1 naming every breach.

- no function longer than 120 lines in src/, app/, examples/ (counted from the line of its
  signature to its closing brace, by brace matching outside comments, strings and characters);
- app/ files at most 200 lines each;
- the layers point one way (see LAYER_RULES);
- nothing points at work history ("session N").

Usage: scripts/check_shape.py [--lengths]   (--lengths prints every function over 60 lines)
"""
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAX_FUNCTION_LINES = 120
MAX_APP_FILE_LINES = 200
SCOPE_WORDS = re.compile(r"\b(namespace|class|struct|union|enum)\b")
CONTROL_WORDS = re.compile(r"^\s*(if|for|while|switch|catch|do|else|try|return)\b")

# (folder or file prefix, include it must not use, why)
LAYER_RULES = [
    ("src/data/", "vlmo/vqa_eval.h", "data does not depend on evaluation"),
    ("src/data/", "vlmo/evaluate.h", "data does not depend on evaluation"),
    ("src/train/", "vlmo/evaluate.h", "training does not depend on evaluation (validation comes as a function)"),
    ("src/eval/", "vlmo/finetune.h", "evaluation does not depend on the fine-tuning plans"),
    ("src/train/", "vlmo/finetune.h", "training does not depend on the fine-tuning plans"),
    ("include/vlmo/distributed.h", "vlmo/objectives.h", "distributed does not depend on the objectives"),
    ("app/cmd_serve.cpp", "vlmo/train.h", "the server does not depend on training"),
    ("src/serve/", "vlmo/train.h", "the server does not depend on training"),
    ("src/util/", "vlmo/model.h", "utilities do not depend on the model"),
    ("src/util/", "vlmo/ops.h", "utilities hold no numerics and use none"),
    ("src/ops/", "vlmo/model.h", "the kernels do not depend on the model"),
    ("src/", '"../../app/', "the library does not depend on the command line"),
    ("include/vlmo/", "../src/", "public headers do not include private ones"),
]


def strip_code(text):
    """Blanks comments, string and character literals (keeping newlines) so braces can be matched."""
    out, i, n = [], 0, len(text)
    while i < n:
        c = text[i]
        if c == "#" and (i == 0 or text[i - 1] == "\n"):  # a preprocessor line (continuations too)
            j = i
            while True:
                j = text.find("\n", j)
                if j < 0 or text[j - 1] != "\\":
                    break
                j += 1
            j = n if j < 0 else j
            out.append("".join(ch if ch == "\n" else " " for ch in text[i:j])); i = j
        elif text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            out.append(" " * (j - i)); i = j
        elif text.startswith("/*", i):
            j = text.find("*/", i + 2)
            j = n if j < 0 else j + 2
            out.append("".join(ch if ch == "\n" else " " for ch in text[i:j])); i = j
        elif text.startswith('R"', i) and (i == 0 or not (text[i - 1].isalnum() or text[i - 1] == "_")):
            m = re.match(r'R"([^(\s]*)\(', text[i:])
            if not m:
                out.append(c); i += 1; continue
            end = text.find(")" + m.group(1) + '"', i)
            j = n if end < 0 else end + len(m.group(1)) + 2
            out.append("".join(ch if ch == "\n" else " " for ch in text[i:j])); i = j
        elif c in "\"'":
            if c == "'" and i > 0 and text[i - 1].isalnum() and i + 1 < n and text[i + 1].isalnum():
                out.append(" "); i += 1; continue  # digit separator 1'000
            j = i + 1
            while j < n and text[j] != c and text[j] != "\n":
                j += 2 if text[j] == "\\" else 1
            j = min(j + 1, n)
            out.append(" " * (j - i)); i = j
        else:
            out.append(c); i += 1
    return "".join(out)


def functions(path):
    """Yields (name, first line, last line) of every function body at namespace or class scope."""
    with open(path, encoding="utf-8") as f:
        code = strip_code(f.read())
    stack = []  # each: (kind, name, start line)
    header_start = 0
    for i, c in enumerate(code):
        if c in ";":
            if not stack or stack[-1][0] != "function":
                header_start = i + 1
        elif c == "{":
            if stack and stack[-1][0] == "function":
                stack.append(("inner", None, 0)); continue
            header = code[header_start:i]
            text = re.sub(r"^\s*(template\s*<[^{]*?>)?", "", header.strip())
            kind = "scope"
            name = None
            if ")" in header and not SCOPE_WORDS.match(text) and not CONTROL_WORDS.match(text) \
                    and not re.search(r"=\s*$", text):
                kind = "function"
                m = re.search(r"([~\w:]+(?:operator\W+)?)\s*\(", text)
                name = m.group(1) if m else text[:40]
            start = code.count("\n", 0, header_start + len(header) - len(header.lstrip())) + 1
            stack.append((kind, name, start))
            header_start = i + 1
        elif c == "}":
            if not stack:
                continue
            kind, name, start = stack.pop()
            if kind == "function":
                yield name, start, code.count("\n", 0, i) + 1
            if not stack or stack[-1][0] != "function":
                header_start = i + 1


def tracked(prefixes, suffixes):
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    return [f for f in files if f.startswith(prefixes) and f.endswith(suffixes)]


def main():
    show = "--lengths" in sys.argv
    breaches = []
    for rel in tracked(("src/", "app/", "examples/"), (".cpp", ".h")):
        for name, first, last in functions(os.path.join(ROOT, rel)):
            length = last - first + 1
            if show and length > 60:
                print(f"{length:4d} {rel}:{first} {name}")
            if length > MAX_FUNCTION_LINES:
                breaches.append(f"{rel}:{first}: function {name} is {length} lines (at most {MAX_FUNCTION_LINES})")
    for rel in tracked(("app/",), (".cpp", ".h")):
        with open(os.path.join(ROOT, rel), encoding="utf-8") as f:
            lines = sum(1 for _ in f)
        if lines > MAX_APP_FILE_LINES:
            breaches.append(f"{rel}: {lines} lines (app/ files hold at most {MAX_APP_FILE_LINES})")
    for prefix, include, why in LAYER_RULES:
        for rel in tracked((prefix,), (".cpp", ".h")):
            with open(os.path.join(ROOT, rel), encoding="utf-8") as f:
                for number, line in enumerate(f, 1):
                    if line.lstrip().startswith("#include") and include in line:
                        breaches.append(f"{rel}:{number}: includes {include}: {why}")
    grep = subprocess.run(["git", "grep", "-n", "-i", "-E", r"session [0-9]", "--", ".", ":!scripts/check_shape.py"],
                          cwd=ROOT, capture_output=True, text=True)
    for line in grep.stdout.splitlines():
        breaches.append(f"{line}: points at work history")
    for b in breaches:
        print(b)
    print(f"check_shape: {len(breaches)} breach(es)", file=sys.stderr)
    return 1 if breaches else 0


if __name__ == "__main__":
    sys.exit(main())
