// Azure Container Registry for module images; the Function App pulls with its identity (AcrPull).
param name string
param location string
param sku string

resource acr 'Microsoft.ContainerRegistry/registries@2023-07-01' = {
  name: name
  location: location
  sku: {
    name: sku
  }
  properties: {
    adminUserEnabled: false
    anonymousPullEnabled: false
  }
}

output name string = acr.name
output loginServer string = acr.properties.loginServer
