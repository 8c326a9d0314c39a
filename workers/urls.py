from django.urls import path

from workers import views

urlpatterns = [path("", views.fleet_page, name="workers")]
