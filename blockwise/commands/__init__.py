"""The blockwise commands of the ``affcons`` CLI, registered in the ``affcons.commands`` entry-point group of
``setup.py`` (see :mod:`affcons.commands`). Command-line options map onto the commands' options models through
:mod:`blockwise.commands.options`."""

from affcons.commands import Command

SEGMENT = Command("blockwise fragments -> RAG -> agglomeration -> segmentations", "blockwise.commands.segment")
PREDICT = Command("blockwise affinity prediction with a trained network", "blockwise.commands.predict")
RUN = Command("the main job: prediction -> segmentation -> evaluation", "blockwise.commands.run")
VIEW = Command("show a run's outputs in neuroglancer (served from disk)", "blockwise.commands.view")
REPORT = Command(
    "an HTML report of a run: metrics, segment sizes, stage times, training curves", "blockwise.commands.report"
)
