"""Prune an installed site folder (pip install --target) of files an H100 never loads.

    python3 prune.py SITE_DIR RULES_FILE

RULES_FILE has one rule a line: `drop GLOB` deletes the files, `strip GLOB` strips their debug
info (binutils `strip --strip-debug`), `sm90 GLOB` zeroes the GPU code for other architectures
in their CUDA fat binaries (see keep_sm90); GLOB is an fnmatch pattern on the path relative to
SITE_DIR ('*' also crosses '/'); the first matching rule wins. Blank lines and '#' comments are
skipped. Every rule must match
at least one file, so a renamed file in a new wheel version is an error, not a silent no-op.
Each dist-info RECORD is rewritten to match (dropped lines removed, stripped files re-hashed),
so importlib.metadata and pip see a consistent install.
"""

import base64
import csv
import fnmatch
import hashlib
import mmap
import os
import struct
import subprocess
import sys

KINDS = ("drop", "strip", "sm90")
FATBIN_MAGIC = 0xBA55ED50
KEEP_SM = 90


def read_rules(path):
    rules = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            parts = line.split()
            if len(parts) != 2 or parts[0] not in KINDS:
                sys.exit(f"{path}:{n}: expected `drop|strip|sm90 GLOB`, got {line!r}")
            rules.append((parts[0], parts[1], n))
    return rules


def all_files(site):
    for d, _, files in os.walk(site):
        for name in files:
            full = os.path.join(d, name)
            yield os.path.relpath(full, site).replace(os.sep, "/")


def record_hash(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    digest = base64.urlsafe_b64encode(h.digest()).rstrip(b"=").decode()
    return f"sha256={digest}", os.path.getsize(path)


def fatbin_section(elf):
    """(offset, size) of the .nv_fatbin section of a 64-bit little-endian ELF, or None."""
    if elf[:4] != b"\x7fELF" or elf[4] != 2:
        return None
    shoff, = struct.unpack_from("<Q", elf, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", elf, 0x3A)
    str_off, = struct.unpack_from("<Q", elf, shoff + shstrndx * shentsize + 0x18)
    for i in range(shnum):
        h = shoff + i * shentsize
        name_off, = struct.unpack_from("<I", elf, h)
        end = elf.find(b"\0", str_off + name_off)
        if elf[str_off + name_off:end] == b".nv_fatbin":
            off, size = struct.unpack_from("<QQ", elf, h + 0x18)
            return off, size
    return None


def keep_sm90(path):
    """Zero, in place, every entry for another architecture of each fat binary that has an sm_90
    cubin. The driver picks the sm_90 cubin on an H100 and never reads the others; their headers
    stay, so every offset and size is unchanged. Zeroed bytes compress to nothing. Returns bytes
    zeroed."""
    zeroed = 0
    with open(path, "r+b") as f, mmap.mmap(f.fileno(), 0) as elf:
        sec = fatbin_section(elf)
        if sec is None:
            return 0
        p, end = sec
        end += p
        while p + 16 <= end:
            magic, _, hsize, fsize = struct.unpack_from("<IHHQ", elf, p)
            if magic != FATBIN_MAGIC:
                p += 8  # containers are 8-byte aligned
                continue
            entries, q = [], p + hsize
            while q < p + hsize + fsize:
                kind, _, ehsize, padded = struct.unpack_from("<HHII", elf, q)
                sm, = struct.unpack_from("<I", elf, q + 0x1C)
                entries.append((kind, sm, q + ehsize, padded))
                q += ehsize + padded
            if any(kind == 2 and sm == KEEP_SM for kind, sm, _, _ in entries):
                for kind, sm, start, size in entries:
                    if sm != KEEP_SM:
                        elf[start:start + size] = bytes(size)
                        zeroed += size
            p += hsize + fsize
    return zeroed


def apply(site, rules):
    files = sorted(all_files(site))
    dropped, stripped, slimmed, used = set(), set(), set(), set()
    for rel in files:
        for kind, pat, n in rules:
            if fnmatch.fnmatch(rel, pat):
                used.add(n)
                {"drop": dropped, "strip": stripped, "sm90": slimmed}[kind].add(rel)
                break
    missing = [f"line {n}: {kind} {pat}" for kind, pat, n in rules if n not in used]
    if missing:
        sys.exit("prune.py: rules that match no file:\n  " + "\n  ".join(missing))
    freed = 0
    for rel in sorted(dropped):
        full = os.path.join(site, rel)
        freed += os.path.getsize(full)
        os.remove(full)
    for rel in sorted(stripped):
        full = os.path.join(site, rel)
        before = os.path.getsize(full)
        subprocess.run(["strip", "--strip-debug", full], check=True)
        freed += before - os.path.getsize(full)
    for rel in sorted(slimmed):
        z = keep_sm90(os.path.join(site, rel))
        if z:
            print(f"  {rel}: zeroed {z / 2**20:.1f} MiB of code for other GPUs")
        freed += z
    return dropped, stripped | slimmed, freed


def records(site):
    """(dist-info name, RECORD path) of every installed distribution."""
    for entry in sorted(os.listdir(site)):
        record = os.path.join(site, entry, "RECORD")
        if entry.endswith(".dist-info") and os.path.isfile(record):
            yield entry, record


def fix_records(site, dropped, changed):
    for _, record in records(site):
        with open(record, encoding="utf-8", newline="") as f:
            rows = list(csv.reader(f))
        out = []
        for row in rows:
            if row[0] in dropped:
                continue
            if row[0] in changed:
                digest, size = record_hash(os.path.join(site, row[0]))
                row = [row[0], digest, str(size)]
            out.append(row)
        with open(record, "w", encoding="utf-8", newline="") as f:
            csv.writer(f, lineterminator="\n").writerows(out)


def verify(site):
    """Every file a RECORD lists exists with the hash and size it gives (pip's own check)."""
    bad = []
    for entry, record in records(site):
        with open(record, encoding="utf-8", newline="") as f:
            for row in csv.reader(f):
                rel, digest, size = (row + ["", ""])[:3]
                if not digest or rel.startswith(".."):
                    continue  # RECORD itself, and scripts outside the folder
                full = os.path.join(site, rel)
                if not os.path.isfile(full):
                    bad.append(f"{entry}: {rel} is missing")
                elif (digest, int(size)) != record_hash(full):
                    bad.append(f"{entry}: {rel} does not match its hash")
    if bad:
        sys.exit("prune.py: the install is inconsistent:\n  " + "\n  ".join(bad[:20]))


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    site, rules_path = sys.argv[1], sys.argv[2]
    dropped, stripped, freed = apply(site, read_rules(rules_path))
    fix_records(site, dropped, stripped)
    verify(site)
    print(f"prune {os.path.basename(site)}: dropped {len(dropped)} files, stripped {len(stripped)}, "
          f"freed {freed / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
