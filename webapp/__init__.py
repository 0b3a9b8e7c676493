"""The visualizer (Flask): a thin layer over `mini_container.stepper` and `mini_container.observe`.

A placeholder until the visualizer issue: the workshop's lessons run in JupyterLab for now.
"""
