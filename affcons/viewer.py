"""Show zarr volumes in neuroglancer, served chunk by chunk from disk.

Two local HTTP servers run in background threads of the calling process, bound to 127.0.0.1 by default:

* neuroglancer's own server (the ``neuroglancer`` package bundles the web client, so no network is needed) serves
  the viewer page and its state;
* a :class:`DataServer` serves the zarr directories of the layers file by file, with CORS headers, and the browser
  reads them as ``zarr3://`` (or ``zarr2://``) sources: chunks are decompressed in the browser, only the chunks in
  view are read, and an OME-Zarr multiscale group (:mod:`affcons.multiscale`) is shown at the level that fits the
  zoom. The Python process never holds more than one chunk file, whatever the volume size
  (``benchmarks/viewer.py`` compares this with neuroglancer's in-process ``LocalVolume``).

A plain array gets its voxel size and offset (nm, z y x) from its funlib.persistence attributes (``voxel_size``,
``offset``) as an explicit coordinate transform; a multiscale group gets them from its OME metadata. A leading
channel axis is a neuroglancer channel dimension (``c^``): affinities are shown as RGB of their first three
channels.

    from affcons.viewer import layers_from_container, serve
    session = serve(layers_from_container("runs/demo/out.zarr", threshold=0.6))
    print(session.url)   # open in a browser; session.close() stops serving
"""

import http.server
import json
import logging
import re
import socket
import threading
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import zarr

from affcons.errors import VolumeError
from affcons.io import VOXEL_SIZE_ATTRS
from affcons.multiscale import read_multiscales

logger = logging.getLogger(__name__)

LayerKind = Literal["image", "segmentation", "affinities"]
LAYER_KINDS = ("image", "segmentation", "affinities")
SEGMENTATION_NAME = re.compile(r"^segmentation_(\d+(?:\.\d+)?)$")
RGB_SHADER = """void main() {
  emitRGB(vec3(toNormalized(getDataValue(0)), toNormalized(getDataValue(1)), toNormalized(getDataValue(2))));
}
"""


@dataclass(frozen=True)
class Layer:
    """One neuroglancer layer: a zarr array (or OME-Zarr multiscale group) on disk and how to show it.

    Attributes:
        name: the layer's name in the viewer.
        path: a zarr v3 (or v2) array with funlib.persistence attributes, or an OME-Zarr 0.5 multiscale group.
        kind: ``image`` (intensities), ``segmentation`` (ids) or ``affinities`` (channels shown as RGB).
        visible: whether the layer is shown at start (hidden layers load nothing until switched on).
        shader: a neuroglancer GLSL shader replacing the kind's default.
    """

    name: str
    path: Path
    kind: LayerKind
    visible: bool = True
    shader: str | None = None


@dataclass(frozen=True)
class VolumeInfo:
    """What the viewer needs to know of a layer's data: dtype, shape (voxels), channel axes, nm geometry."""

    dtype: np.dtype
    shape: tuple[int, ...]
    channel_axes: int
    voxel_size: tuple[float, ...]
    offset: tuple[float, ...]
    zarr_format: int
    multiscale: bool


def volume_info(path: str | Path) -> VolumeInfo:
    """Read the metadata (never the data) of a zarr array or an OME-Zarr multiscale group.

    A missing path, or a group without multiscales metadata, is a :class:`~affcons.errors.VolumeError`.
    """
    path = Path(path)
    multiscales = read_multiscales(path)
    if multiscales is not None:
        level0 = multiscales.levels[0]
        array = _open_array(path / level0.path)
        return VolumeInfo(
            np.dtype(array.dtype),
            tuple(array.shape),
            multiscales.channel_axes,
            level0.voxel_size,
            level0.offset,
            array.metadata.zarr_format,
            multiscale=True,
        )
    array = _open_array(path)
    attrs = array.attrs.asdict()
    spatial = 3
    channel_axes = array.ndim - spatial
    if channel_axes < 0:
        raise VolumeError(f"{path}: the viewer shows 3-D volumes (z, y, x), this array has shape {array.shape}")
    voxel_size = next((attrs[key] for key in VOXEL_SIZE_ATTRS if key in attrs), None)
    if voxel_size is None:
        logger.warning("%s has no voxel size attribute (%s); showing 1 nm voxels", path, ", ".join(VOXEL_SIZE_ATTRS))
        voxel_size = (1, 1, 1)
    offset = attrs.get("offset", (0, 0, 0))
    if len(voxel_size) != spatial or len(offset) != spatial:
        raise VolumeError(f"{path}: voxel_size {voxel_size} and offset {offset} must be (z, y, x) nm")
    return VolumeInfo(
        np.dtype(array.dtype),
        tuple(array.shape),
        channel_axes,
        tuple(float(v) for v in voxel_size),
        tuple(float(o) for o in offset),
        array.metadata.zarr_format,
        multiscale=False,
    )


def _open_array(path: Path) -> zarr.Array:
    try:
        node = zarr.open(str(path), mode="r")
    except (FileNotFoundError, zarr.errors.NodeTypeValidationError, ValueError) as error:
        raise VolumeError(f"{path}: not a zarr array or OME-Zarr multiscale group ({error})") from None
    if not isinstance(node, zarr.Array):
        raise VolumeError(f"{path}: a zarr group without OME multiscales metadata; name one of its arrays")
    return node


def kind_of(info: VolumeInfo) -> LayerKind:
    """``segmentation`` for 32/64-bit integers, ``affinities`` for data with channels, else ``image``."""
    if info.dtype.kind in "iu" and info.dtype.itemsize >= 4 and info.channel_axes == 0:
        return "segmentation"
    if info.channel_axes:
        return "affinities"
    return "image"


def segmentation_threshold(name: str) -> float | None:
    """The threshold of a segmentation named ``segmentation_<t>`` (as ``affcons segment`` writes them), else None."""
    match = SEGMENTATION_NAME.match(name)
    return float(match.group(1)) if match else None


def layers_from_container(container: str | Path, threshold: float | None = None) -> list[Layer]:
    """The layers of every array and multiscale group in a zarr container, with their kinds and visibility.

    Shown at start: ``raw`` (else the first image), and the segmentation of ``threshold`` (``segmentation_<t>``,
    e.g. the best threshold of a run's evaluation), else ``fragments``. Other segmentations, affinities and images
    (e.g. the disagreement map) are listed hidden. An unknown ``threshold`` is a VolumeError listing those there are.
    """
    container = Path(container)
    if not container.is_dir():
        raise VolumeError(f"{container}: no such zarr container")
    layers = []
    for name, path in _volumes(container):
        layers.append(Layer(name, path, kind_of(volume_info(path)), visible=False))
    if not layers:
        raise VolumeError(f"{container}: holds no zarr arrays")
    thresholds = {t: layer.name for layer in layers if (t := segmentation_threshold(layer.name)) is not None}
    shown = set()
    if threshold is not None:
        match = [name for t, name in thresholds.items() if abs(t - threshold) < 1e-9]
        if not match:
            available = ", ".join(f"{t:g}" for t in sorted(thresholds)) or "none"
            raise VolumeError(f"{container}: no segmentation at threshold {threshold:g} (thresholds: {available})")
        shown.add(match[0])
    elif any(layer.name == "fragments" for layer in layers):
        shown.add("fragments")
    images = [layer.name for layer in layers if layer.kind == "image"]
    if images:
        shown.add("raw" if "raw" in images else images[0])
    drawing_order = {"image": 0, "affinities": 1, "segmentation": 2}  # neuroglancer draws later layers on top
    layers.sort(key=lambda layer: (drawing_order[layer.kind], layer.name != "raw", layer.name != "fragments"))
    return [Layer(layer.name, layer.path, layer.kind, visible=layer.name in shown) for layer in layers]


def _volumes(container: Path) -> list[tuple[str, Path]]:
    """``(name, path)`` of every array and OME multiscale group below ``container``, not descending into them."""
    found = []
    pending = [container]
    while pending:
        directory = pending.pop()
        for child in sorted(p for p in directory.iterdir() if p.is_dir()):
            if is_volume(child):
                found.append((child.relative_to(container).as_posix(), child))
            else:
                pending.append(child)
    return sorted(found)


def is_volume(directory: Path) -> bool:
    """True if ``directory`` is one layer's data: a zarr array (v3 or v2) or an OME-Zarr multiscale group."""
    return read_multiscales(directory) is not None or _is_array(directory)


def _is_array(directory: Path) -> bool:
    if (directory / ".zarray").is_file():
        return True
    metadata = directory / "zarr.json"
    return metadata.is_file() and json.loads(metadata.read_text()).get("node_type") == "array"


class DataServer:
    """A threaded HTTP server for zarr directories: ``GET /<root index>/<file>`` with CORS and byte ranges.

    Only files below the given roots are served (others, and missing chunks, answer 404, which zarr readers treat
    as fill value). Files are streamed, never read whole.
    """

    def __init__(self, roots: Sequence[Path], bind_address: str = "127.0.0.1", port: int = 0):
        self.roots = [Path(root).resolve() for root in roots]
        server = self

        class Handler(_ZarrRequestHandler):
            def resolve(self, url_path: str) -> Path | None:
                return server.resolve(url_path)

        self._httpd = http.server.ThreadingHTTPServer((bind_address, port), Handler)
        self._httpd.daemon_threads = True
        host = socket.getfqdn() if bind_address in ("", "0.0.0.0", "::") else bind_address
        self.url = f"http://{host}:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="affcons-data-server", daemon=True)
        self._thread.start()

    def url_of(self, root_index: int) -> str:
        return f"{self.url}/{root_index}/"

    def resolve(self, url_path: str) -> Path | None:
        """The file that ``/<root index>/<relative path>`` names, or None if it is outside the roots or missing."""
        parts = urllib.parse.unquote(url_path.split("?", 1)[0]).lstrip("/").split("/", 1)
        if not parts[0].isdigit() or int(parts[0]) >= len(self.roots):
            return None
        root = self.roots[int(parts[0])]
        target = (root / (parts[1] if len(parts) > 1 else "")).resolve()
        if not target.is_relative_to(root) or not target.is_file():
            return None
        return target

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()


class _ZarrRequestHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def resolve(self, url_path: str) -> Path | None:
        raise NotImplementedError

    def log_message(self, format: str, *args) -> None:
        logger.debug("data server: " + format, *args)

    def _cors(self) -> None:
        self.send_header("Access-Control-Allow-Origin", "*")
        self.send_header("Access-Control-Allow-Headers", "range")
        self.send_header("Access-Control-Expose-Headers", "content-range, content-length")

    def do_OPTIONS(self) -> None:
        self.send_response(204)
        self._cors()
        self.send_header("Access-Control-Allow-Methods", "GET, HEAD, OPTIONS")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_HEAD(self) -> None:
        self._send(body=False)

    def do_GET(self) -> None:
        self._send(body=True)

    def _send(self, body: bool) -> None:
        target = self.resolve(self.path)
        if target is None:
            self.send_response(404)
            self._cors()
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        size = target.stat().st_size
        start, end = 0, size
        byte_range = _parse_range(self.headers.get("Range"), size)
        if byte_range == "unsatisfiable":
            self.send_response(416)
            self._cors()
            self.send_header("Content-Range", f"bytes */{size}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if byte_range is not None:
            start, end = byte_range
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{size}")
        else:
            self.send_response(200)
        self._cors()
        self.send_header(
            "Content-Type", "application/json" if target.name.endswith(".json") else "application/octet-stream"
        )
        self.send_header("Content-Length", str(end - start))
        self.end_headers()
        if body:
            with open(target, "rb") as file:
                file.seek(start)
                remaining = end - start
                while remaining > 0:
                    chunk = file.read(min(remaining, 1 << 20))
                    if not chunk:
                        break
                    self.wfile.write(chunk)
                    remaining -= len(chunk)


def _parse_range(header: str | None, size: int) -> tuple[int, int] | str | None:
    """``(start, end)`` (end exclusive) of a single ``bytes=`` range, ``"unsatisfiable"``, or None for none/other."""
    if not header or not header.startswith("bytes=") or "," in header:
        return None
    first, _, last = header[len("bytes=") :].strip().partition("-")
    try:
        if first == "":
            start, end = max(0, size - int(last)), size  # suffix: the last N bytes
        else:
            start = int(first)
            end = size if last == "" else min(size, int(last) + 1)
    except ValueError:
        return None
    if start >= end:
        return "unsatisfiable"
    return start, end


class ViewerSession:
    """A running neuroglancer viewer and its data server; ``url`` opens it, :meth:`close` stops the data server."""

    def __init__(self, viewer, data_server: DataServer, layers: Sequence[Layer]):
        self.viewer = viewer
        self.data_server = data_server
        self.layers = list(layers)

    @property
    def url(self) -> str:
        return self.viewer.get_viewer_url()

    def close(self) -> None:
        self.data_server.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


def serve(
    layers: Sequence[Layer],
    bind_address: str = "127.0.0.1",
    layout: str = "4panel",
    panel_pixels: int = 300,
) -> ViewerSession:
    """Start serving ``layers`` to neuroglancer and return the session (its ``url`` is the page to open).

    Args:
        layers: what to show; the first visible image layer (else the first layer) sets the viewer's axes (nm); the
            view is centred on, and zoomed to, the first visible segmentation layer (else that image layer).
        bind_address: interface of both servers; ``0.0.0.0`` makes them reachable from other machines (the URL then
            names this host). neuroglancer binds once per process: later calls reuse its first address.
        layout: neuroglancer layout (``4panel``, ``xy``, ``xz``, ``yz``, ``3d``, ...).
        panel_pixels: the zoom makes the volume's y-x extent fit a panel of about this many pixels.
    """
    import neuroglancer

    if not layers:
        raise VolumeError("nothing to show: no layers")
    names = [layer.name for layer in layers]
    if len(set(names)) != len(names):
        raise VolumeError(f"layer names must be unique, got {names}")
    infos = [volume_info(layer.path) for layer in layers]
    for layer in layers:
        if layer.kind not in LAYER_KINDS:
            raise VolumeError(f"layer {layer.name}: kind must be one of {LAYER_KINDS}, got {layer.kind!r}")
    if not neuroglancer.server.is_server_running():
        neuroglancer.set_server_bind_address(bind_address)
    data_server = DataServer([layer.path for layer in layers], bind_address)
    viewer = neuroglancer.Viewer()
    reference = first_visible(layers, infos, "image") or infos[0]
    focus = first_visible(layers, infos, "segmentation") or reference
    with viewer.txn() as state:
        state.dimensions = neuroglancer.CoordinateSpace(names=["z", "y", "x"], units="nm", scales=reference.voxel_size)
        focus_nm = [s * v for s, v in zip(focus.shape[focus.channel_axes :], focus.voxel_size)]
        centre_nm = [o + e / 2 for o, e in zip(focus.offset, focus_nm)]
        state.position = [c / v for c, v in zip(centre_nm, reference.voxel_size)]
        state.cross_section_scale = max(e / v for e, v in zip(focus_nm[1:], reference.voxel_size[1:])) / panel_pixels
        state.display_dimensions = ["x", "y", "z"]  # the xy panel shows x across, y down; z is the section
        state.layout = layout
        for index, (layer, info) in enumerate(zip(layers, infos)):
            source = _layer_source(neuroglancer, data_server.url_of(index), info)
            if layer.kind == "segmentation":
                state.layers[layer.name] = neuroglancer.SegmentationLayer(source=source)
            else:
                shader = layer.shader
                if shader is None and layer.kind == "affinities" and info.shape[0] >= 3:
                    shader = RGB_SHADER
                state.layers[layer.name] = neuroglancer.ImageLayer(
                    source=source, **({"shader": shader} if shader else {})
                )
            state.layers[layer.name].visible = layer.visible
    logger.info("neuroglancer: %s (data from %s)", viewer.get_viewer_url(), data_server.url)
    return ViewerSession(viewer, data_server, layers)


def first_visible(layers: Sequence[Layer], infos: Sequence[VolumeInfo], kind: str) -> VolumeInfo | None:
    """The geometry of the first visible layer of ``kind``, or None."""
    return next((info for layer, info in zip(layers, infos) if layer.visible and layer.kind == kind), None)


def _layer_source(neuroglancer, url: str, info: VolumeInfo):
    """A ``zarr3://``/``zarr2://`` source with the transform that puts it at its place in nm.

    A plain array's dimensions are unitless voxels to neuroglancer: the transform declares them in nm (input and
    output spaces) and translates by the offset. A multiscale group brings its geometry along (OME metadata); only
    its channel axes need a transform: OME channels arrive as local dimensions (``c'``) centred on integers
    (channel 0 spans -0.5..0.5), so they are shifted by half a channel and renamed to channel dimensions (``c^``),
    which the RGB shader reads.
    """
    source_url = f"{'zarr3' if info.zarr_format == 3 else 'zarr2'}://{url}"
    if info.multiscale and not info.channel_axes:
        return neuroglancer.LayerDataSource(url=source_url)
    channels = info.channel_axes
    rank = channels + 3
    space = neuroglancer.CoordinateSpace(
        names=(["c^"] if channels == 1 else [f"c{i}^" for i in range(channels)]) + ["z", "y", "x"],
        units=[""] * channels + ["nm"] * 3,
        scales=[1] * channels + list(info.voxel_size),
    )
    matrix = np.zeros((rank, rank + 1))
    matrix[:, :rank] = np.eye(rank)
    if info.multiscale:
        matrix[:channels, rank] = 0.5
        transform = neuroglancer.CoordinateSpaceTransform(output_dimensions=space, matrix=matrix.tolist())
    else:
        matrix[channels:, rank] = [o / v for o, v in zip(info.offset, info.voxel_size)]
        transform = neuroglancer.CoordinateSpaceTransform(
            input_dimensions=space, output_dimensions=space, matrix=matrix.tolist()
        )
    return neuroglancer.LayerDataSource(url=source_url, transform=transform)
