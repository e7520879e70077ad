"""``ldm fit``: from a folder of images to a trained, evaluated latent diffusion model in one command.

One job per module: :mod:`survey` reads the folder, :mod:`conditioning` decides captions / labels / nothing,
:mod:`table` holds the measured rows, :mod:`plan` and :mod:`estimates` choose sizes, steps and batch from the
data, the device and the budget, :mod:`record` keeps RUN/plan.json and RUN/stages.json, :mod:`stages` and
:mod:`evaluate` run the library's trainers, encoder and evaluations, :mod:`run` orders the stages, and
:mod:`command` ties them to the ``ldm fit`` command. docs/fit.md describes the whole.
"""
