# escape=`

FROM mcr.microsoft.com/windows/servercore:ltsc2022
SHELL ["powershell", "-Command", "$ErrorActionPreference = 'Stop';"]
ENV TOOLS=C:\tools `
    DATA="C:\Program Files\data"
COPY testfile.txt c:\
WORKDIR C:\app
RUN New-Item -ItemType Directory -Force -Path $env:TOOLS ; `
    Write-Host 'backslash \ stays literal'
CMD ["cmd", "/S", "/C", "dir c:\\"]
