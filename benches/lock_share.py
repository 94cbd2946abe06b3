#!/usr/bin/env python3
"""How much of a profile waits on atomic operations.

On x86 a `lock`-prefixed instruction (and `xchg` with memory) waits for
every load and store before it, and a sampled profile puts that wait on
the instruction or on the one after it. This sums, for each function,
the samples on both, from `perf annotate --stdio` output:

    perf record -F 999 -t <poll loop thread id> -o loop.data -- sleep 4
    perf annotate -i loop.data --stdio > loop.annotate.txt
    benches/lock_share.py loop.annotate.txt [top N]

It prints that share of the annotated samples (perf annotates the
functions it can disassemble: nearly all of a Rust or C thread's), then
the functions with the most, each as a share of the same. BENCHMARKS.md, forty-third
sitting, "The fold without its shards' locks, tried".
"""
import re
import sys

HEADER = re.compile(r"Disassembly of \S+ for \S+ \((\d+) samples")
FUNCTION = re.compile(r"^\s+:\s+\d+\s+[0-9a-f]{6,} <(.*)>:$")
INSTRUCTION = re.compile(r"^\s+(\d+\.\d+)\s+:\s+[0-9a-f]+:\s+(.*)$")


def atomic(instruction):
    # `xchg` locks only with a memory operand; `xchg %ax,%ax` is padding.
    return instruction.startswith("lock") or (instruction.startswith("xchg") and "(" in instruction)


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    top = int(sys.argv[2]) if len(sys.argv) > 2 else 20
    total, samples, function, previous = 0, 0, None, ""
    by_function = {}
    with open(sys.argv[1], encoding="utf-8", errors="replace") as annotated:
        for line in annotated:
            header = HEADER.search(line)
            if header:
                # A new function's listing: its sample count, its name next.
                samples, function, previous = int(header.group(1)), None, ""
                total += samples
                continue
            name = FUNCTION.match(line)
            if name and function is None:
                function = name.group(1)
                continue
            instruction = INSTRUCTION.match(line)
            if instruction:
                percent, text = float(instruction.group(1)), instruction.group(2).strip()
                if atomic(text) or atomic(previous):
                    by_function[function] = by_function.get(function, 0.0) + percent * samples / 100
                previous = text
    if total == 0:
        sys.exit("no annotated samples found: is this `perf annotate --stdio` output?")
    waiting = sum(by_function.values())
    print(f"{waiting / total:.1%} of {total} annotated samples on or just after an atomic operation")
    for name, count in sorted(by_function.items(), key=lambda item: -item[1])[:top]:
        print(f"{count / total:6.2%}  {name}")


if __name__ == "__main__":
    main()
