"""The steps of a run, one file each: a typed config section and the block function (``process_block``).

``predict`` (raw -> affinities), ``fragments`` (affinities -> watershed fragments + nodes), ``edges`` (RAG edges
with mergeable statistics), ``agglomerate`` (the one global step: RAG -> merge tree -> lookup tables, in the driver)
and ``extract`` (fragments -> a segmentation per threshold). :mod:`blockwise.registry` names the blockwise ones.
"""
