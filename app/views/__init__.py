"""Views of a stream: HoloViews plots, history under them, freshness."""
