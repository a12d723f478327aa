import uuid

from django.db import models


class Product(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    title = models.CharField(max_length=200)
    photo = models.ImageField(upload_to="thirdparty/", blank=True)

    def __str__(self) -> str:
        return self.title
