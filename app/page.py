"""The frame of every page headrace serves: a Panel template with the system's state.

One place for the look: the header carries a state badge (colour and words), controls
go in the sidebar, and the template's toggle switches light and dark themes (or
``?theme=dark``).
"""

from __future__ import annotations

from collections.abc import Sequence

import panel as pn

ACCENT = "#1565c0"


def page(
    title: str, main: Sequence[object], sidebar: Sequence[object], state: pn.pane.HTML
) -> pn.template.BaseTemplate:
    """A served page: ``state`` in the header, ``sidebar`` and ``main`` as they are."""
    return pn.template.FastListTemplate(
        title=title,
        header=[state],
        sidebar=list(sidebar),
        main=list(main),
        accent=ACCENT,
        theme_toggle=True,
        sidebar_width=300,
    )
