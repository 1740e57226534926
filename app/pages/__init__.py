"""The pages headrace serves: template, dashboard, operator page."""
