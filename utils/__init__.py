"""GPT-2 training workflow for Jupyter and Colab.

Importing `utils` is cheap: heavy optional dependencies (transformers, matplotlib, pandas,
ipywidgets) are imported only inside the functions that use them.
"""

__version__ = "0.1.0"
DISTRIBUTION = "colab-gpt2"  # the name pip installs it under, and its command's name
