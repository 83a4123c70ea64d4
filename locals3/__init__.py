"""The project's own S3 server for DVC: `rclone serve s3` on 127.0.0.1, objects stored as plain files.

    python -m locals3 up|down|status|push      the command line (__main__.py); `make storage-up`,
                                               `make storage-down` and the last step of `make run` call it

Modules: store (settings, the store folder and its files), repo (a clone's DVC config), server (start, stop,
status of the one `rclone serve s3`), push (`dvc push` that tolerates an unreachable remote).
"""
