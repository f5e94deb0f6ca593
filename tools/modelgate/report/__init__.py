"""Reports a person looks at: the gate's and the golden test's comparisons, a release's review page
and the registry as a page. Self-contained HTML (Jinja2, matplotlib SVG), every value escaped."""
