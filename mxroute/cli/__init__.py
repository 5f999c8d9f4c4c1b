"""The command line: parse arguments, call the wings below, render the answer.

May import every wing. ``main`` holds no logic of its own.
"""
