"""The Gradio WebUI: its tabs translate clicks into service calls."""
