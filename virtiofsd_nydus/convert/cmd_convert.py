"""``vnydus convert SOURCE OUTPUT_DIR``."""

from __future__ import annotations

import argparse
from pathlib import Path

from .auth import Credentials
from .convert import Options, convert
from .platform import Platform


def _mib(n: int) -> str:
    return f"{n:,} B ({n / (1 << 20):,.1f} MiB)"


def run(args: argparse.Namespace) -> int:
    opts = Options(
        chunk_size=args.chunk_size,
        compression_level=args.compression_level,
        chunk_dicts=[Path(p) for p in args.chunk_dict],
        platform=Platform.parse(args.platform) if args.platform else None,
        tls_verify=args.tls_verify == "true",
        creds=Credentials.parse(args.src_creds) if args.src_creds else None,
        workers=args.jobs,
        progress=args.progress,
    )
    res = convert(args.source, Path(args.output_dir), opts)
    st, asm = res.stats, res.assembled
    unique = asm.new_data_bytes
    print(f"converted {args.source} -> {res.output} ({res.layers} layers)")
    print(f"  manifest        {res.manifest_digest}")
    print(f"  root digest     {res.root_digest.hex()}")
    print(f"  tree            {asm.files} files, {asm.dirs} dirs, {asm.others} other")
    print(f"  layer file data {_mib(st.input_bytes)} in {st.files} files (all layers)")
    print(f"  final tree data {_mib(asm.logical_bytes)}")
    print(f"  zero/holes      {_mib(st.hole_bytes)}")
    print(f"  deduplicated    {_mib(st.dedup_bytes)} within the image")
    if opts.chunk_dicts:
        print(f"  from chunk dict {_mib(st.dict_bytes)} (not stored again)")
    print(
        f"  stored chunks   {_mib(unique)} uncompressed -> {_mib(res.blob_bytes)} in the new blob"
    )
    print(
        f"  blobs           {len(asm.image.blobs)} "
        f"({len(asm.image.blobs) - (1 if asm.new_blob else 0)} from chunk dicts)"
    )
    if args.push:
        from .push import push_image

        push_image(
            res.output,
            args.push,
            tls_verify=args.dest_tls_verify == "true",
            creds=Credentials.parse(args.dest_creds) if args.dest_creds else None,
        )
    return 0
