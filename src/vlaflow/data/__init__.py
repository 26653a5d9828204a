"""Robot-learning data: LeRobot dataset reading (v3.0, v2.1) and writing (v3.0), video coding.

Import the submodules directly (``vlaflow.data.lerobot``, ``vlaflow.data.video``); this package does
not import them itself so that ``import vlaflow.data`` stays cheap.
"""
