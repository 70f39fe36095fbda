# contrib/ holds files for other projects (a spandrel checkout's layout, a ComfyUI custom node):
# nothing here is a test of this project. tests/test_contrib.py checks these folders.
collect_ignore_glob = ["*"]
