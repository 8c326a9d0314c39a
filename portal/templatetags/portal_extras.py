from django import template

from portal.charts import human_bytes

register = template.Library()


@register.filter(name="bytes")
def bytes_filter(value: int) -> str:
    return human_bytes(int(value or 0))
