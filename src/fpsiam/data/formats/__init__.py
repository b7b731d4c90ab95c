"""One module per source format of ``fpsiam data convert``, each exporting its reader ``from_<format>``.

``ldpolypvideo``, ``kvasir``, ``masks``, ``voc``, ``yolo``, ``coco``: each module's docstring says the layout it
reads. What they share is :mod:`fpsiam.data.formats._common`; the table of formats and the dispatch are
:mod:`fpsiam.data.convert` (import from there). Nothing is imported here, so importing a format module does not
import the others.
"""
