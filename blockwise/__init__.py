"""Blockwise processing on daisy 2: ``affcons segment`` (fragments -> RAG in a graph store -> merge tree ->
segmentations), one step per module.
Design: ``docs/design/blockwise.md``; usage: README.md, section "Segmenting a volume"."""
