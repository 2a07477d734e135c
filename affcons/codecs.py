"""The compressions of every zarr array affcons writes (a light module: configs import its names)."""

from typing import Literal, get_args

from affcons.errors import ConfigError

#: Compression of a zarr v3 array: blosc with zstd or lz4 (level 5), gzip (level 5), or none.
Compression = Literal["blosc-zstd", "blosc-lz4", "gzip", "none"]
COMPRESSIONS: tuple[str, ...] = get_args(Compression)


def zarr_compressors(compression: str) -> list:
    """The zarr v3 codecs of ``compression`` (one of :data:`COMPRESSIONS`)."""
    from zarr.codecs import BloscCodec, GzipCodec

    if compression == "blosc-zstd":
        return [BloscCodec(cname="zstd", clevel=5)]
    if compression == "blosc-lz4":
        return [BloscCodec(cname="lz4", clevel=5)]
    if compression == "gzip":
        return [GzipCodec(level=5)]
    if compression == "none":
        return []
    raise ConfigError(f"unknown compression {compression!r}; choose one of {', '.join(COMPRESSIONS)}")
