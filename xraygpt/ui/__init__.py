"""The Gradio chat demo: settings (`settings`), reading uploads (`uploads`), the UI (`app`).

`settings` and `uploads` import no Gradio, so configs and uploads can be checked without it.
"""
