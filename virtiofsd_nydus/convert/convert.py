"""``vnydus convert``: source image → OCI layout with a bootstrap and chunk blobs."""

from __future__ import annotations

import tarfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from ..errors import ImageError, LocalError
from ..format.model import DEFAULT_CHUNK_SIZE, valid_chunk_size
from ..format.reader import Bootstrap
from ..format.writer import write_bootstrap
from .assemble import Assembled, assemble
from .auth import Credentials
from .blobwriter import Spool
from .chunkdict import load_chunk_dicts
from .chunker import ChunkPipeline, Stats
from .layers import TreeBuilder
from .ocilayout import LayoutWriter
from .platform import Platform
from .progress import Progress
from .sources.open import open_source
from .staging import staged_dir

log = structlog.get_logger(__name__)


@dataclass
class Options:
    chunk_size: int = DEFAULT_CHUNK_SIZE
    compression_level: int = 3
    chunk_dicts: list[Path] = field(default_factory=list)
    platform: Platform | None = None
    tls_verify: bool = True
    creds: Credentials | None = None
    workers: int | None = None
    progress: bool | None = None  # None: when stderr is a terminal


@dataclass
class Result:
    output: Path
    manifest_digest: str
    root_digest: bytes
    stats: Stats
    assembled: Assembled
    layers: int
    blob_bytes: int  # size of the newly written data blob (0 if none)


def convert(source: str, output: Path, opts: Options) -> Result:
    if not valid_chunk_size(opts.chunk_size):
        raise LocalError(f"chunk size {opts.chunk_size}: want a power of two, 4 KiB to 16 MiB")
    if not 1 <= opts.compression_level <= 22:
        raise LocalError(f"compression level {opts.compression_level}: want 1..22")
    cdict = load_chunk_dicts(opts.chunk_dicts, opts.chunk_size)
    progress = Progress(opts.progress)
    with (
        open_source(source, opts.platform, opts.tls_verify, opts.creds) as src,
        staged_dir(output) as tmp,
    ):
        layers = src.layers()
        config = src.config()
        writer = LayoutWriter(tmp)
        spool = Spool(tmp / "spool", opts.chunk_size)
        pipeline = ChunkPipeline(
            opts.chunk_size, opts.compression_level, spool, cdict, opts.workers, progress.advance
        )
        builder = TreeBuilder(pipeline)
        try:
            for i, layer in enumerate(layers):
                what = f"{src.name}: layer {i + 1}/{len(layers)}"
                progress.stage(f"layer {i + 1}/{len(layers)}")
                log.info("applying layer", layer=i + 1, of=len(layers), digest=layer.digest)
                try:
                    builder.apply_layer(src.entries(i, layer), what)
                except (tarfile.TarError, EOFError, zlib.error) as exc:
                    raise ImageError(f"{what}: corrupt layer ({exc})") from None
            stats = pipeline.finish()
        except BaseException:
            pipeline.abort()
            spool.close()
            raise
        finally:
            progress.close()
        asm = assemble(builder.root, builder.slots, spool, cdict, opts.chunk_size, writer.blob_dir)
        for blob, path in asm.blob_files:
            writer.link_blob(blob.digest, path)
        boot = write_bootstrap(asm.image)
        platform = opts.platform or _config_platform(config) or Platform.host()
        mdigest = writer.write(boot, asm.image.blobs, config, platform, src.tag)
        root_digest = Bootstrap.from_bytes(boot).root_digest
        new_blob = asm.new_blob.compressed_size if asm.new_blob else 0
    return Result(output, mdigest, root_digest, stats, asm, len(layers), new_blob)


def _config_platform(config: dict[str, object] | None) -> Platform | None:
    if not config:
        return None
    os_, arch = config.get("os"), config.get("architecture")
    if isinstance(os_, str) and isinstance(arch, str):
        variant = config.get("variant")
        return Platform(os_, arch, variant if isinstance(variant, str) else None)
    return None
