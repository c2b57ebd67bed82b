"""The study's reader study: blinded image pairs, a web app for raters, and the analysis.

``pairs`` makes the pairs (one composite image per pair, the key kept apart), ``db`` stores
raters and answers, ``app`` serves the rating pages, ``analysis`` scores the answers.
"""
