"""Reading and writing other projects' checkpoint formats (openpi, LeRobot)."""
