#!/usr/bin/env python3
"""Prints the fleet's Lua scripts from src/fleet/scripts.rs as `NAME<TAB>file` after writing
each to DIR/NAME.lua (LEASE_PRELUDE expanded), for redis-cli --eval / SCRIPT LOAD."""
import re
import sys

src = open("src/fleet/scripts.rs").read()
prelude = re.search(r'const LEASE_PRELUDE: &str = r#"(.*?)"#;', src, re.S).group(1)
out = sys.argv[1]
for name, body in re.findall(r'pub\(crate\) static (\w+): LazyLock<Script>.*?r#"(.*?)"#', src, re.S):
    body = body.replace("{LEASE_PRELUDE}", prelude)
    path = f"{out}/{name}.lua"
    with open(path, "w") as f:
        f.write(body)
    print(f"{name}\t{path}")
