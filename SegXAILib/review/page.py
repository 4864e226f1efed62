"""The review page's layout (trame + Vuetify 3): the four Slicer views, and beside them the controls,
the legend, what was explained in plain words and the scores table. Element ids are what the browser tests use."""
from __future__ import annotations

from .. import score_labels


def scores_table(meta: dict) -> list:
    """``[{name, text, good}]``: each score of a map by plain name, its value (3 significant digits), what is good."""
    rows = []
    for key, value in score_labels.flatten_scores(meta).items():
        rows.append({"key": key, "name": score_labels.plain_name(key), "text": f"{value:.3g}",
                     "good": score_labels.what_is_good(key)})
    return rows


def build_ui(server, layout_manager, title: str):
    """The page: a drawer of controls and information, the views' grid in the main area."""
    from trame.ui.vuetify3 import SinglePageWithDrawerLayout
    from trame.widgets import html
    from trame.widgets import vuetify3 as v

    with SinglePageWithDrawerLayout(server, full_height=True) as ui:
        ui.title.set_text(title)
        with ui.drawer as drawer:
            drawer.width = 380
            with v.VContainer(classes="pa-3", style="font-size: 13px"):
                with html.Div(id="progress", v_show="computing || progress.length || progress_error"):
                    html.Div("Computing: {{ progress_stage }}", classes="text-subtitle-2", v_show="computing")
                    v.VProgressLinear(indeterminate=True, v_show="computing", color="primary", classes="mb-1")
                    with html.Table(classes="progress-list", style="font-size: 12px"):
                        with html.Tr(v_for="row in progress", key="row.name", classes="progress-row"):
                            html.Td("{{ row.name }}", classes="progress-name", style="padding-right: 8px")
                            html.Td("{{ row.text }}", classes="progress-text")
                    html.Div("{{ progress_error }}", id="progress-error", v_show="progress_error",
                             classes="text-error mt-1")
                v.VSelect(label="Case", v_model=("case_name", ""), items=("cases", []), id="case-select",
                          density="compact", v_show="cases.length > 1")
                html.Div("Method", classes="text-subtitle-2")
                with v.VBtnToggle(v_model=("method", ""), mandatory=True, density="compact", divided=True,
                                  classes="mb-2 flex-wrap", style="height: auto"):
                    v.VBtn("{{ m.title }}", v_for="m in methods", key="m.name", value=("m.name",),
                           id=("'method-' + m.name",), size="small")
                v.VSlider(label="Opacity", v_model=("opacity", 0.4), min=0, max=1, step=0.05, density="compact",
                          hide_details=True, thumb_label=True, id="opacity")
                v.VSlider(label="Threshold", v_model=("faint", 0.1), min=0, max=0.9, step=0.05, density="compact",
                          hide_details=True, thumb_label=True, id="threshold")
                html.Pre("{{ legend }}", id="legend", style="white-space: pre-wrap; font-size: 12px",
                         classes="mt-2 pa-2 bg-grey-lighten-4")
                with html.Div(id="segments", classes="mt-2", v_show="segments.length"):
                    with html.Span(v_for="seg in segments", key="seg.name", classes="segment mr-3",
                                   style="white-space: nowrap; display: inline-block"):
                        html.Span(classes="segment-swatch", style=("{background: seg.color, display: 'inline-block', "
                                                                   "width: '12px', height: '12px', border: '1px solid #888', "
                                                                   "marginRight: '4px', verticalAlign: 'middle'}",))
                        html.Span("{{ seg.name }}", classes="segment-name")
                with html.Table(id="about", classes="mt-2"):
                    with html.Tr(v_for="row in about", key="row.name"):
                        html.Th("{{ row.name }}", style="text-align: left; padding-right: 8px")
                        html.Td("{{ row.text }}")
                html.Div("Scores", classes="text-subtitle-2 mt-3")
                with html.Table(id="scores", style="border-collapse: collapse"):
                    with html.Tr(v_for="row in scores", key="row.key", title=("row.good",), classes="score-row"):
                        html.Td("{{ row.name }}", classes="score-name", style="padding-right: 8px")
                        html.Td("{{ row.text }}", classes="score-value", style="text-align: right; padding-right: 8px")
                        html.Td("{{ row.good.split(':')[0] }}", classes="score-good text-grey-darken-1")
                with html.Div(v_show="metrics.length || reference_note", id="reference"):
                    html.Div("Segmentation against the reference", classes="text-subtitle-2 mt-3")
                    html.Div("{{ reference_note }}", id="reference-note", classes="text-caption")
                    with html.Table(id="metrics", style="border-collapse: collapse"):
                        with html.Tr(v_for="row in metrics", key="row.key", title=("row.good",), classes="metric-row"):
                            html.Td("{{ row.name }}", classes="metric-name", style="padding-right: 8px")
                            html.Td("{{ row.text }}", classes="metric-value", style="text-align: right")
                html.Div("Deletion and insertion curves", classes="text-subtitle-2 mt-3", v_show="curves_html")
                html.Div(v_html=("curves_html", ""), id="curves")
                html.Div("{{ notes }}", id="notes", classes="mt-2 text-caption")
        ui.footer.clear()  # no Kitware banner over the bottom of the views
        with ui.content:
            with html.Div(style="height: calc(100vh - 64px - 28px); display: flex", id="views"):
                layout_manager.initialize_layout_grid(ui)
    return ui
