"""Bad inputs fed through every entry point: the upload and import APIs, the management
commands and the background tasks.

The modules ``slide_files``, ``annotation_files`` (GeoJSON), ``xml_files`` (ASAP and
Aperio ImageScope), ``checkpoint_files``, ``report_files`` (report CSV tables) and
``tile_datasets`` (KI-layout folders) write one file or folder per bad case into a folder
the test gives (pytest's ``tmp_path``), several of them cut or edited from the real files
in ``../shared/data``. The ``test_*`` modules feed each one through each entry point and
check the message, the exit status and that nothing was left half-created.
"""
