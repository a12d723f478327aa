from rest_framework import serializers


class TinyProductSerializer(serializers.Serializer):
    id = serializers.IntegerField(source="pk")
    label = serializers.CharField(source="name")
