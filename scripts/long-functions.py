#!/usr/bin/env python3
"""Lists the functions longer than N lines (default 70) in crates/*/src, longest first.

A function's length runs from its `fn` line to the line of its closing brace; modules
behind #[cfg(test)] and files outside src/ (tests, benches) are left out. Braces are
matched on the code with comments, strings, raw strings and char literals blanked out.

Usage, from the repository root:  python3 scripts/long-functions.py [N] [ROOT]
"""
import re, sys, glob
N = int(sys.argv[1]) if len(sys.argv) > 1 else 70
root = sys.argv[2] if len(sys.argv) > 2 else 'crates'

def strip(text):
    out = []; i = 0; n = len(text)
    while i < n:
        c = text[i]
        if text.startswith('//', i):
            j = text.find('\n', i); j = n if j < 0 else j
            out.append(' ' * (j - i)); i = j
        elif text.startswith('/*', i):
            j = text.find('*/', i + 2); j = n if j < 0 else j + 2
            out.append(re.sub(r'[^\n]', ' ', text[i:j])); i = j
        elif c == 'r' and re.match(r'r#*"', text[i:i+10]) and (i == 0 or not (text[i-1].isalnum() or text[i-1] == '_')):
            m = re.match(r'r(#*)"', text[i:]); close = '"' + m.group(1)
            j = text.find(close, i + len(m.group(0))); j = n if j < 0 else j + len(close)
            out.append(re.sub(r'[^\n]', ' ', text[i:j])); i = j
        elif c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == '\\' else 1
            j += 1
            out.append(re.sub(r'[^\n]', ' ', text[i:j])); i = j
        elif c == "'":
            m = re.match(r"'(\\.[^']*|[^\\'])'", text[i:])
            if m:
                out.append(' ' * len(m.group(0))); i += len(m.group(0))
            else:
                out.append(c); i += 1
        else:
            out.append(c); i += 1
    return ''.join(out)

rows = []
for path in sorted(glob.glob(f'{root}/*/src/**/*.rs', recursive=True)):
    code = strip(open(path).read())
    lines = code.split('\n')
    # cut #[cfg(test)] modules
    skip = set()
    for k, l in enumerate(lines):
        if l.strip().startswith('#[cfg(test)]') and k + 1 < len(lines) and re.match(r'\s*(pub(\(.*\))?\s+)?mod\s', lines[k+1]):
            depth = 0; started = False
            for m in range(k + 1, len(lines)):
                skip.add(m)
                depth += lines[m].count('{') - lines[m].count('}')
                if '{' in lines[m]: started = True
                if started and depth <= 0: break
                if not started and lines[m].rstrip().endswith(';'): break
    for k, l in enumerate(lines):
        if k in skip: continue
        m = re.match(r'\s*(pub(\([^)]*\))?\s+)?(const\s+)?(async\s+)?(unsafe\s+)?(extern\s+"C"\s+)?fn\s+(\w+)', l)
        if not m: continue
        depth = 0; started = False
        for e in range(k, len(lines)):
            for ch in lines[e]:
                if ch == '{': depth += 1; started = True
                elif ch == '}': depth -= 1
                elif ch == ';' and not started and depth == 0: break
            else:
                if started and depth == 0: break
                continue
            break
        if not started: continue
        length = e - k + 1
        if length > N:
            rows.append((length, path, k + 1, m.group(7)))
for length, path, line, name in sorted(rows, reverse=True):
    print(f'{length:4} {path}:{line} {name}')
print(f'{len(rows)} functions over {N} lines, {sum(1 for r in rows if r[0] > 100)} over 100')
